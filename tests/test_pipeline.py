"""`champion run` on digits end to end, in a real SQLite-backed MLflow store with real ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST, ShipModel, Shipped, invoke

pytestmark = pytest.mark.slow
NAME = "digits-cnn"


@pytest.fixture(scope="module")
def first(shipped_model: ShipModel) -> Shipped:
    """`champion run` as FAST (3 epochs), in a folder of its own: the first champion, later tests build on it."""
    return shipped_model(NAME, epochs=3, output_files=Path("outputs-1"))  # relative: in the store


@pytest.fixture(scope="module")
def store(first: Shipped) -> Path:
    return first.root


def client():
    from mlflow import MlflowClient

    return MlflowClient()


def test_first_run_trains_gates_exports_and_registers(store: Path, first) -> None:
    v = first.values
    assert v["RESULT"] == "passed" and v["GATE2_RESULT"] == "passed"
    assert v["MODEL_VERSION"] == "1" and v["ONNX_MODEL_VERSION"] == "1"
    assert (store / "outputs-1" / "RUN_ID").read_text() == v["RUN_ID"]
    assert (store / "mlflow.db").is_file()  # the no-server default store

    c = client()
    run = c.get_run(v["RUN_ID"])
    assert run.info.run_name == NAME and run.info.status == "FINISHED"
    history = c.get_metric_history(v["RUN_ID"], "val_accuracy")
    assert [m.step for m in history] == [0, 1, 2]  # step = epoch
    for key in ("train_loss", "val_loss", "best_val_accuracy", "epoch_time", "learning_rate"):
        assert len(c.get_metric_history(v["RUN_ID"], key)) == 3, key
    m = run.data.metrics
    assert 0.9 <= m["best_val_accuracy"] <= 1.0  # a fraction, not a percentage
    assert all(0 <= m[f"val_accuracy_class_{i}"] <= 1 for i in range(10))
    assert m["model_size_mb"] > 0 and m["inference_time_ms"] > 0
    assert run.data.params["training.epochs"] == "3"
    for tag in ("git.commit", "git.branch", "git.dirty", "architecture", "approach", "pretrained", "frozen_layers"):
        assert tag in run.data.tags, tag
    assert run.data.tags["architecture"] == "mnist_cnn" and len(run.data.tags["data.digest"]) == 16
    assert run.inputs.dataset_inputs[0].dataset.digest == run.data.tags["data.digest"]

    artifacts = {a.path for a in c.list_artifacts(v["RUN_ID"])}
    assert {"config.yaml", "gate_report.json", "model_card", "evaluation.json"} <= artifacts
    card_files = {a.path for a in c.list_artifacts(v["RUN_ID"], "model_card/plots")}
    assert card_files == {f"model_card/plots/{p}.png" for p in ("confusion_matrix", "per_class_accuracy", "training_loss", "training_accuracy")}
    report = json.loads(Path(c.download_artifacts(v["RUN_ID"], "gate_report.json", str(store))).read_text())
    assert report["result"] == "passed" and report["champion"] is None and report["decided_by"] == "all criteria met"
    assert Path(v["MODEL_CARD"]).is_file()

    export_run = c.get_run(v["EXPORT_RUN_ID"])
    assert export_run.info.run_name == f"export-{NAME}-v1"
    assert c.get_experiment(export_run.info.experiment_id).name == "model-exports"
    assert export_run.data.tags["parent_run_id"] == v["RUN_ID"] and export_run.data.tags["parent_model_version"] == "1"
    for key in ("export_duration_seconds", "onnx_file_size_mb", "validation_max_abs_diff", "validation_speedup"):
        assert key in export_run.data.metrics, key
    assert "metadata.json" in {a.path for a in c.list_artifacts(v["EXPORT_RUN_ID"])}


def test_registered_models_agree_on_predictions(store: Path, first) -> None:
    import mlflow
    import onnxruntime  # noqa: F401 - mlflow.onnx needs it to run the model

    from champion import ingest
    from champion.config import Config

    c = client()
    assert str(c.get_model_version_by_alias(NAME, "champion").version) == "1"
    assert str(c.get_model_version_by_alias(f"{NAME}-onnx", "deploy").version) == "1"
    torch_model = mlflow.pytorch.load_model(f"models:/{NAME}@champion")
    onnx_model = mlflow.onnx.load_model(f"models:/{NAME}-onnx@deploy")
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    data = ingest.prepare(Config().data, Config().training.seed)
    x = data.split("val")[0][:64].astype(np.float32) / 255
    import torch

    with torch.inference_mode():
        torch_top1 = torch_model(torch.from_numpy(x)).argmax(1).numpy()
    onnx_top1 = session.run(None, {"input": x})[0].argmax(1)
    assert (torch_top1 == onnx_top1).all()


def test_same_run_again_is_rejected_and_changes_nothing(store: Path, first) -> None:
    c = client()
    before = {str(v.version) for v in c.search_model_versions(f"name='{NAME}'")}
    onnx_before = {str(v.version) for v in c.search_model_versions(f"name='{NAME}-onnx'")}
    again = invoke("run", *FAST)
    assert again.exit_code == 3, again.stderr  # Gate 1's rejection code: an answer, not a crash
    assert again.values["RESULT"] == "failed" and "EXPORT_RUN_ID" not in again.values
    assert str(c.get_model_version_by_alias(NAME, "champion").version) == "1"
    assert {str(v.version) for v in c.search_model_versions(f"name='{NAME}'")} == before
    assert {str(v.version) for v in c.search_model_versions(f"name='{NAME}-onnx'")} == onnx_before
    report = json.loads(Path(c.download_artifacts(again.values["RUN_ID"], "gate_report.json", str(store))).read_text())
    assert report["decided_by"] == "improvement_over_champion" and str(report["champion"]["version"]) == "1"
    assert c.get_run(again.values["RUN_ID"]).data.tags["gate1.result"] == "failed"
    # Deterministic training: the rerun is identical, epoch by epoch, not merely close.
    for key in ("train_loss", "val_loss", "val_accuracy"):
        histories = [[(m.step, m.value) for m in c.get_metric_history(r, key)] for r in (first.values["RUN_ID"], again.values["RUN_ID"])]
        assert histories[0] == histories[1], key


def test_changed_data_re_evaluates_the_champion_on_the_candidates_split(store: Path, first) -> None:
    import mlflow

    from champion import evaluate, ingest
    from champion.config import load_config

    result = invoke("run", *FAST, "--set", "data.validation_split=0.25")
    assert result.exit_code in (0, 3), result.stderr
    c = client()
    report = json.loads(Path(c.download_artifacts(result.values["RUN_ID"], "gate_report.json", str(store))).read_text())
    assert report["champion"]["evaluated_on"].startswith("re-evaluated")
    # The champion's score is its accuracy on the new validation split, not its old logged metric.
    data = ingest.prepare(load_config(overrides=["data.validation_split=0.25"]).data, 42)
    x_val, y_val = data.split("val")
    champion = mlflow.pytorch.load_model(f"models:/{NAME}/1")
    expected = evaluate.accuracy(y_val, evaluate.predict_logits(champion, x_val).argmax(1))
    assert report["champion"]["value"] == pytest.approx(expected)


def test_gate2_failure_leaves_deploy_unchanged(store: Path, first) -> None:
    """A tampered export is an integrity error (exit 1); an export whose numbers are wrong is a rejection (exit 4)."""
    import onnx
    from onnx import numpy_helper

    from champion.registry import integrity

    c = client()
    deploy_before = str(c.get_model_version_by_alias(f"{NAME}-onnx", "deploy").version)
    onnx_versions_before = len(c.search_model_versions(f"name='{NAME}-onnx'"))
    exported = invoke("export", "--model-name", NAME, "--quiet")
    assert exported.exit_code == 0, exported.stderr
    export_id = exported.values["EXPORT_RUN_ID"]
    import mlflow

    model_id = c.get_run(export_id).data.tags["model_uri"].removeprefix("models:/")
    model_dir = Path(mlflow.get_logged_model(model_id).artifact_location.removeprefix("file://"))
    onnx_file = model_dir / "model.onnx"
    model = onnx.load(str(onnx_file))
    init = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.01, init.name))
    onnx.save(model, str(onnx_file))

    # Changed in the artefact store after export: not the file exported, so no verdict about it at all.
    tampered = invoke("validate", "--export-run-id", export_id, "--quiet")
    assert tampered.exit_code == 1, tampered.stderr
    assert "not the one exported" in tampered.stderr and "RESULT" not in tampered.values
    assert not {"validation_failure_report.json", "validation_report.json"} & {a.path for a in c.list_artifacts(export_id)}

    # The same file as if the exporter had written it (recorded hash matches): Gate 2 judges its numbers.
    meta_file = Path(c.get_run(export_id).info.artifact_uri.removeprefix("file://")) / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["onnx_sha256"] = integrity.onnx_sha256(onnx_file)[0]
    meta_file.write_text(json.dumps(meta))
    result = invoke("validate", "--export-run-id", export_id, "--quiet")
    assert result.exit_code == 4, result.stderr
    assert result.values["RESULT"] == "failed" and "MODEL_VERSION" not in result.values
    assert str(c.get_model_version_by_alias(f"{NAME}-onnx", "deploy").version) == deploy_before
    assert len(c.search_model_versions(f"name='{NAME}-onnx'")) == onnx_versions_before
    artifacts = {a.path for a in c.list_artifacts(export_id)}
    assert "validation_failure_report.json" in artifacts and "validation_report.json" not in artifacts
    report = json.loads(Path(c.download_artifacts(export_id, "validation_failure_report.json", str(store))).read_text())
    assert report["failures"] and all(f.get("within_tolerance") is False for f in report["failures"])


def test_unknown_run_id_is_a_clear_error(store: Path, first) -> None:
    result = invoke("promote", "--run-id", "doesnotexist0000")
    assert result.exit_code == 1
    assert "doesnotexist0000" in result.stderr and "does not exist" in result.stderr


def test_export_without_champion_is_a_clear_error(store: Path, first) -> None:
    result = invoke("export", "--model-name", "no-such-model")
    assert result.exit_code == 1 and "champion promote" in result.stderr
