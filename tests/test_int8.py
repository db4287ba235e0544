"""The int8 gate on digits: real ONNX Runtime quantization, a real SQLite-backed MLflow store.

One training serves every test: `champion run` with `onnx_int8` and a sabotaged calibration set (a
folder of constant grey images), which the int8 gate rejects while the float model ships; then
`champion quantize` on the same export, calibrated on the training split as by default, which
passes; then once more sabotaged with a candidate bar of 1.0, which the stored bar still rejects.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from conftest import ShipModel, Shipped, invoke, module_workdir

pytestmark = pytest.mark.slow
NAME = "digits-cnn"
INT8 = f"{NAME}-onnx-int8"


def _constant_folder(root: Path, value: int = 128) -> Path:
    """Two classes of constant grey 28x28 images: a calibration set that says nothing about digits."""
    from PIL import Image

    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((28, 28), value, np.uint8), mode="L").save(root / cls / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with module_workdir(tmp_path_factory, "int8") as root:
        yield root


@pytest.fixture(scope="module")
def constant(store: Path) -> Path:
    return _constant_folder(store / "constant")


@pytest.fixture(scope="module")
def sabotaged_run(store: Path, constant: Path, shipped_model: ShipModel) -> Shipped:
    """`champion run` as FAST (3 epochs) with onnx_int8, calibrated on `constant`, in the module's store."""
    return shipped_model(
        NAME, "export.formats=[onnx,onnx_int8]", f"export.int8.calibration_source={constant}", epochs=3, store=store,
        output_files=store / "out-run",
    )  # fmt: skip


@pytest.fixture(scope="module")
def passed(sabotaged_run):
    """The same export quantized again, calibrated on the training split (the default)."""
    result = invoke("quantize", "--export-run-id", sabotaged_run.values["EXPORT_RUN_ID"], "--set", "export.int8.calibration_source=null", "--quiet")
    assert result.exit_code == 0, result.stderr
    return result


def client():
    from mlflow import MlflowClient

    return MlflowClient()


def report(store: Path, run_id: str) -> dict:
    folder = store / "reports" / run_id
    return json.loads(Path(client().download_artifacts(run_id, "int8_gate_report.json", str(folder))).read_text())


def test_a_sabotaged_calibration_fails_the_int8_gate_and_the_float_model_still_ships(store: Path, sabotaged_run) -> None:
    v = sabotaged_run.values
    # The float gates' verdicts and exit code (0, checked by the fixture) are untouched by the int8 rejection.
    assert v["RESULT"] == "passed" and v["GATE2_RESULT"] == "passed" and v["ONNX_MODEL_VERSION"] == "1"
    assert v["INT8_RESULT"] == "failed" and "INT8_MODEL_VERSION" not in v
    assert (store / "out-run" / "INT8_RESULT").read_text() == "failed"
    c = client()
    assert c.get_registered_model(f"{NAME}-onnx").aliases == {"deploy": 1}
    assert c.search_registered_models(f"name = '{INT8}'") == []  # the registry is untouched for int8

    r = report(store, v["INT8_RUN_ID"])
    assert r["result"] == "failed" and r["failures"][0]["check"] == "accuracy_drop"
    assert r["accuracy"]["drop"] > 0.3 and r["accuracy"]["float"] >= 0.9  # constant grey saturates every range
    assert r["calibration"]["source"] == str(store / "constant") and r["calibration"]["samples"] == 8
    assert r["calibration"]["disjoint_from_validation"] == {"by_index": None, "by_content": True}
    run = c.get_run(v["INT8_RUN_ID"])
    assert run.data.tags["int8.result"] == "failed" and run.data.metrics["int8_accuracy_drop"] == r["accuracy"]["drop"]
    assert c.get_run(v["EXPORT_RUN_ID"]).data.tags["gate2.result"] == "passed"


def test_int8_passes_on_a_normal_calibration_and_is_registered_deploy(store: Path, sabotaged_run, passed) -> None:
    from champion.registry import history

    v = passed.values
    assert v["INT8_RESULT"] == "passed" and v["INT8_MODEL_VERSION"] == "1"
    c = client()
    assert c.get_registered_model(INT8).aliases == {"deploy": 1}
    mv = c.get_model_version(INT8, "1")
    assert mv.tags["int8_gate.result"] == "passed" and mv.tags["run_id"] == v["INT8_RUN_ID"]
    assert mv.tags["parent_export_run_id"] == sabotaged_run.values["EXPORT_RUN_ID"] and mv.tags["parent_model_version"] == "1"

    r = report(store, v["INT8_RUN_ID"])
    assert r["result"] == "passed" and r["failures"] == []
    assert r["accuracy"]["drop"] <= r["max_accuracy_drop"] == 0.01 and r["accuracy"]["samples"] == 360
    assert 0.95 <= r["top1_agreement"] <= 1.0
    assert 0 < r["size"]["ratio"] < 0.5  # int8 weights: a fraction of the float file
    for bs in (1, 32):
        lat = r["latency"][f"batch_{bs}"]
        assert lat["float_ms"] > 0 and lat["int8_ms"] > 0 and lat["speedup"] == pytest.approx(lat["float_ms"] / lat["int8_ms"])

    moves = [e for e in history.events(NAME, alias="deploy", registered_model=INT8)]
    assert [(e.reason, e.to_version) for e in moves] == [("int8 gate passed", "1")]
    assert moves[0].report == f"runs:/{v['INT8_RUN_ID']}/int8_gate_report.json"


def test_calibration_and_evaluation_are_disjoint(store: Path, passed) -> None:
    """The report's calibration positions are training items of the cache entry, none of them a validation item or image."""
    from champion import ingest
    from champion.stages import int8 as quantize
    from champion.config import Config

    r = report(store, passed.values["INT8_RUN_ID"])
    cal = r["calibration"]
    assert cal["split"] == "train" and cal["samples"] == 256 and cal["disjoint_from_validation"] == {"by_index": True, "by_content": True}
    cfg = Config()
    data = ingest.prepare(cfg.data, cfg.training.seed)  # the whole entry, indices as the cache holds them
    assert data.digest == cal["data_digest"] == r["evaluation"]["data_digest"]
    items = data.splits["train"][cal["positions"]]
    assert np.intersect1d(items, data.splits["val"]).size == 0 and len(set(items.tolist())) == 256
    x_val, _ = data.split("val")
    assert not set(quantize._digests(data.images[items])) & set(quantize._digests(x_val))

    # A calibration source holding validation images: they are dropped, by content.
    from PIL import Image

    folder = store / "leaky"
    for i, image in enumerate(x_val[:3]):
        (folder / "v").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0], mode="L").save(folder / "v" / f"{i}.png")
    _constant_folder(folder / "c")
    settings = cfg.export.int8.model_copy(update={"calibration_source": str(folder)})
    leaky = quantize.calibration_set(settings, cfg.data, cfg.training.seed, data)
    assert leaky.report["dropped_identical_to_validation"] == 3 and leaky.report["samples"] == 8
    assert not set(quantize._digests(leaky.images)) & set(quantize._digests(x_val))


def test_the_stored_bar_judges_not_the_candidates(store: Path, sabotaged_run, constant: Path, passed) -> None:
    export_run = sabotaged_run.values["EXPORT_RUN_ID"]
    loose = invoke(
        "quantize", "--export-run-id", export_run, "--set", f"export.int8.calibration_source={constant}",
        "--set", "export.int8.max_accuracy_drop=1.0", "--quiet",
    )  # fmt: skip
    assert loose.exit_code == 0, loose.stderr  # a rejection is an answer
    assert loose.values["INT8_RESULT"] == "failed" and "INT8_MODEL_VERSION" not in loose.values
    r = report(store, loose.values["INT8_RUN_ID"])
    assert r["max_accuracy_drop"] == 0.01 and r["policy"]["source"] == "registered model"
    assert r["policy"]["candidate_config"]["export"]["int8"]["max_accuracy_drop"] == 1.0
    assert "export.int8.max_accuracy_drop" in r["policy"]["differs_from_candidate"]
    c = client()
    assert [str(m.version) for m in c.search_model_versions(f"name = '{INT8}'")] == ["1"]  # nothing registered
    assert c.get_registered_model(INT8).aliases == {"deploy": 1}

    # Only export.int8.* may be overridden: the data and everything else stay the training run's.
    other = invoke("quantize", "--export-run-id", export_run, "--set", "data.source=mnist", "--quiet")
    assert other.exit_code == 2 and "export.int8" in other.stderr


def test_a_policy_stored_before_the_int8_gate_reads_the_default_bar() -> None:
    from champion.registry import policy

    old = policy.parse(json.dumps({"schema": 1, "export": {"atol": 1e-4, "rtol": 1e-3, "num_samples": 10, "batch_sizes": [1]}}), "m")
    assert old.export.int8.max_accuracy_drop == 0.01 and old.export.atol == 1e-4


def test_deploy_triton_and_serve_take_the_int8_model_by_name(store: Path, passed) -> None:
    from champion.deploy import serve

    deployed = invoke("deploy", "triton", "--model-name", INT8, "--repository", str(store / "triton"), "--quiet")
    assert deployed.exit_code == 0, deployed.stderr
    assert deployed.values["TRITON_MODEL_DIR"] == str(store / "triton" / f"{NAME}-int8")
    config = (store / "triton" / f"{NAME}-int8" / "config.pbtxt").read_text()
    assert f'name: "{NAME}-int8"' in config and f"{INT8} v1" in config
    assert (store / "triton" / f"{NAME}-int8" / "1" / "model.onnx").is_file()  # one self-contained file

    model = serve.load_model(INT8)
    assert (model.name, model.registry_name, model.version) == (f"{NAME}-int8", INT8, "1")
    logits = model.session.run(None, {"input": np.zeros((2, 1, 28, 28), np.float32)})[0]
    assert logits.shape == (2, 10)


def test_rollback_moves_the_int8_deploy_by_its_name(store: Path, sabotaged_run, passed) -> None:
    from champion.registry import history

    again = invoke("quantize", "--export-run-id", sabotaged_run.values["EXPORT_RUN_ID"], "--set", "export.int8.calibration_source=null", "--quiet")
    assert again.exit_code == 0 and again.values["INT8_MODEL_VERSION"] == "2", again.stderr
    c = client()
    assert c.get_registered_model(INT8).aliases == {"deploy": 2}

    rolled = invoke("models", "rollback", INT8)
    assert rolled.exit_code == 0 and rolled.values["MODEL_VERSION"] == "1", rolled.stderr
    assert f"rolled back @deploy of {INT8}: v2 -> v1" in rolled.stderr and "note:" not in rolled.stderr  # both serve v1
    assert c.get_registered_model(INT8).aliases == {"deploy": 1}
    assert c.get_registered_model(f"{NAME}-onnx").aliases == {"deploy": 1}  # the float model's is its own
    assert c.get_model_version(INT8, "2").tags["rolled_back"] == "true"
    moves = [(e.reason, e.from_version, e.to_version) for e in history.events(NAME, alias="deploy", registered_model=INT8)]
    assert moves[-1] == ("rollback", "2", "1")

    # An int8 @deploy exported from another version of the model than the float @deploy is named.
    c.set_model_version_tag(INT8, "1", "parent_model_version", "7")
    try:
        note = history.other_deploy(NAME, f"{NAME}-onnx")
    finally:
        c.set_model_version_tag(INT8, "1", "parent_model_version", "1")
    assert note is not None and f"{INT8} @deploy is still v1 (exported from {NAME} v7)" in note and f"rollback {INT8}" in note
    assert history.other_deploy(NAME, f"{NAME}-onnx") is None


def test_an_int8_error_in_champion_run_still_reports_what_shipped(store: Path) -> None:
    """Not a rejection but an error (here an empty calibration folder): exit 1 with the error, after
    the float model's outputs, INT8_RESULT=error and the card; nothing of int8 is registered."""
    (store / "empty").mkdir()
    out = store / "out-error"
    result = invoke(
        "run", "--set", "model.name=int8-error", "--set", "training.epochs=1", "--set", "promotion_criteria.threshold=0.5",
        "--set", "export.formats=[onnx,onnx_int8]", "--set", f"export.int8.calibration_source={store / 'empty'}",
        "--output-files", str(out), "--quiet",
    )  # fmt: skip
    assert result.exit_code == 1 and "error:" in result.stderr and "no class sub-folders" in result.stderr, result.stderr
    v = result.values
    assert v["RESULT"] == "passed" and v["GATE2_RESULT"] == "passed" and v["INT8_RESULT"] == "error" and "MODEL_CARD" in v
    assert (out / "INT8_RESULT").read_text() == "error" and (out / "ONNX_MODEL_VERSION").read_text() == v["ONNX_MODEL_VERSION"]
    assert Path(v["MODEL_CARD"]).is_file()
    c = client()
    assert c.get_registered_model("int8-error-onnx").aliases == {"deploy": 1}  # the float model shipped
    assert c.search_registered_models("name = 'int8-error-onnx-int8'") == []


def test_data_changed_since_training_is_refused_before_quantizing(store: Path) -> None:
    """Another draw of the split could put training images in the validation split: an error, nothing quantized."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder = store / "folder"
    for i, (image, label) in enumerate(zip(digits.images[:200], digits.target[:200])):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 15).astype(np.uint8), mode="L").save(folder / str(label) / f"{i}.png")
    shipped = invoke(
        "run", "--set", "model.name=int8-data", "--set", f"data.source={folder}", "--set", "training.epochs=1",
        "--set", "promotion_criteria.threshold=0.1", "--quiet",
    )  # fmt: skip
    assert shipped.exit_code == 0 and shipped.values["GATE2_RESULT"] == "passed", shipped.stderr
    Image.fromarray((digits.images[300] * 15).astype(np.uint8), mode="L").save(folder / "0" / "new.png")
    result = invoke("quantize", "--export-run-id", shipped.values["EXPORT_RUN_ID"], "--quiet")
    assert result.exit_code == 1 and "changed since int8-data v1 trained" in result.stderr, result.stderr
    assert "INT8_RESULT" not in result.values
    assert client().search_registered_models("name = 'int8-data-onnx-int8'") == []


def test_a_disk_failure_while_quantizing_is_an_error_not_a_rejection(store: Path, sabotaged_run, monkeypatch: pytest.MonkeyPatch) -> None:
    """No disk can be filled here on purpose: ONNX Runtime's quantizer is made to fail as a full disk would."""
    import onnxruntime.quantization

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnxruntime.quantization, "quantize_static", full)
    before = [str(m.version) for m in client().search_model_versions(f"name = '{INT8}'")]
    result = invoke("quantize", "--export-run-id", sabotaged_run.values["EXPORT_RUN_ID"], "--set", "export.int8.per_channel=true", "--quiet")
    assert result.exit_code == 1 and "INT8_RESULT" not in result.values, result.stdout + result.stderr
    assert "No space left on device" in result.stdout + result.stderr
    assert [str(m.version) for m in client().search_model_versions(f"name = '{INT8}'")] == before
