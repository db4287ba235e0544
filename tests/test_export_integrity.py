"""Export and Gate 2 trust only what the gates decided and what the hashes prove.

@deploy only for versions that passed Gate 1 (rollbacks say so), tampered artefacts are errors
(exit 1) not rejections, a model ONNX Runtime refuses is a rejection (exit 4) not an outage,
large models use external data that is hashed too, and the ONNX model carries a signature.
Real SQLite-backed MLflow with local artefacts (which the tests tamper with on disk), real ORT.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import ShipModel, Shipped, invoke

pytestmark = pytest.mark.slow
NAME = "integ-cnn"


@pytest.fixture(scope="module")
def first(shipped_model: ShipModel) -> Shipped:
    """`champion run` for 1 epoch: v1 @champion, exported and validated (<name>-onnx v1 @deploy)."""
    return shipped_model(NAME, "export.num_samples=20")


@pytest.fixture(scope="module")
def store(first: Shipped) -> Path:
    return first.root


def client():
    from mlflow import MlflowClient

    return MlflowClient()


def local(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def logged_model_dir(export_run_id: str) -> Path:
    import mlflow

    model_id = client().get_run(export_run_id).data.tags["model_uri"].removeprefix("models:/")
    return local(mlflow.get_logged_model(model_id).artifact_location)


def metadata_file(export_run_id: str) -> Path:
    return local(client().get_run(export_run_id).info.artifact_uri) / "metadata.json"


def export(*args: str) -> str:
    result = invoke("export", "--model-name", NAME, "--quiet", *args)
    assert result.exit_code == 0, result.stderr
    return result.values["EXPORT_RUN_ID"]


def registry_state() -> tuple:
    c = client()
    versions = sorted(str(v.version) for v in c.search_model_versions(f"name='{NAME}-onnx'"))
    return versions, dict(c.get_registered_model(f"{NAME}-onnx").aliases)


def test_onnx_model_has_a_signature(store: Path, first) -> None:
    import mlflow

    info = mlflow.models.get_model_info(f"models:/{NAME}-onnx@deploy")
    assert info.signature is not None
    [inp] = info.signature.inputs.inputs
    [out] = info.signature.outputs.inputs
    assert inp.name == "input" and inp.shape == (-1, 1, 28, 28) and inp.type == np.dtype("float32")
    assert out.name == "logits" and out.shape == (-1, 10)


def test_hand_registered_version_cannot_be_exported_or_validated(store: Path, first) -> None:
    import mlflow

    c = client()
    run_uri = c.get_run(first.values["RUN_ID"]).data.tags["model_uri"]
    by_hand = mlflow.register_model(run_uri, NAME)  # no gate decided this version
    result = invoke("export", "--model-name", NAME, "--version", str(by_hand.version), "--quiet")
    assert result.exit_code == 1, result.stdout + result.stderr
    assert "Quality Gate 1" in result.stderr and "champion promote --run-id" in result.stderr
    assert "EXPORT_RUN_ID" not in result.values

    # An export of a version whose pass record is gone (made by older code, or the tag removed) is refused too.
    export_id = export()
    c.delete_model_version_tag(NAME, "1", "gate1.result")
    try:
        before = registry_state()
        refused = invoke("validate", "--export-run-id", export_id, "--quiet")
        assert refused.exit_code == 1 and "Quality Gate 1" in refused.stderr, refused.stderr
        assert registry_state() == before
    finally:
        c.set_model_version_tag(NAME, "1", "gate1.result", "passed")


def test_tampered_onnx_is_an_integrity_error_not_a_rejection(store: Path, first) -> None:
    export_id = export()
    onnx_file = logged_model_dir(export_id) / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes() + b"\0")  # still loads; no longer what was exported
    before = registry_state()
    result = invoke("validate", "--export-run-id", export_id, "--quiet")
    assert result.exit_code == 1, result.stdout + result.stderr
    assert "not the one exported" in result.stderr and "RESULT" not in result.values
    assert registry_state() == before
    names = {a.path for a in client().list_artifacts(export_id)}
    assert "validation_failure_report.json" not in names and "validation_report.json" not in names
    assert "gate2.result" not in client().get_run(export_id).data.tags


def test_model_onnxruntime_refuses_is_a_rejection_naming_the_loader_error(store: Path, first) -> None:
    """An exporter that wrote a graph ORT cannot load: the hash matches, the model is broken."""
    import onnx

    export_id = export()
    onnx_file = logged_model_dir(export_id) / "model.onnx"
    model = onnx.load(str(onnx_file))
    model.graph.node[0].op_type = "NoSuchOperator"
    onnx.save(model, str(onnx_file))
    meta_path = metadata_file(export_id)
    meta = json.loads(meta_path.read_text())
    from champion.registry import integrity

    meta["onnx_sha256"] = integrity.onnx_sha256(onnx_file)[0]  # as if the export had written it so
    meta_path.write_text(json.dumps(meta))
    before = registry_state()

    result = invoke("validate", "--export-run-id", export_id, "--quiet")
    assert result.exit_code == 4, result.stdout + result.stderr
    assert result.values["RESULT"] == "failed" and "MODEL_VERSION" not in result.values
    assert registry_state() == before
    report = json.loads(Path(client().download_artifacts(export_id, "validation_failure_report.json", str(store / export_id))).read_text())
    [failure] = report["failures"]
    assert failure["check"] == "onnxruntime_load" and "NoSuchOperator" in failure["error"]
    assert client().get_run(export_id).data.tags["gate2.result"] == "failed"


def test_older_champion_exports_as_a_rollback(store: Path, first) -> None:
    from champion.registry import history

    better = invoke("train", "--quiet", "--epochs", "3", "--set", f"model.name={NAME}")
    assert better.exit_code == 0, better.stderr
    promoted = invoke("promote", "--run-id", better.values["RUN_ID"], "--quiet")
    assert promoted.exit_code == 0, promoted.stderr
    assert promoted.values["MODEL_VERSION"] != "1"

    export_id = export("--version", "1")  # passed Gate 1, no longer @champion: a rollback
    tags = client().get_run(export_id).data.tags
    assert tags["export.reason"] == "rollback" and tags["export.current_champion_version"] == promoted.values["MODEL_VERSION"]
    meta = json.loads(metadata_file(export_id).read_text())
    assert meta["export_reason"] == "rollback" and meta["parent_model_version"] == "1"
    validated = invoke("validate", "--export-run-id", export_id, "--quiet")
    assert validated.exit_code == 0, validated.stderr
    moved = history.events(NAME)[-1]
    assert moved.reason == history.GATE2_PASSED and moved.details["export_reason"] == "rollback"
    assert moved.details["parent_model_version"] == "1"
    current = client().get_run(export("--alias", "champion")).data.tags
    assert current["export.reason"] == "champion"


def test_external_data_export_is_hashed_whole_and_loads(store: Path, first, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow
    import onnxruntime as ort

    from champion import ingest
    from champion.config import Config

    monkeypatch.setenv("CHAMPION_ONNX_EXTERNAL_DATA_BYTES", "0")  # force the >2 GB layout on a small model
    export_id = export()
    model_dir = logged_model_dir(export_id)
    assert (model_dir / "model.onnx.data").is_file()
    meta = json.loads(metadata_file(export_id).read_text())
    assert meta["external_data"] is True and meta["onnx_files"] == ["model.onnx", "model.onnx.data"]
    assert client().get_run(export_id).data.tags["onnx.external_data"] == "true"

    validated = invoke("validate", "--export-run-id", export_id, "--quiet")
    assert validated.exit_code == 0, validated.stderr
    version = validated.values["MODEL_VERSION"]
    onnx_model = mlflow.onnx.load_model(f"models:/{NAME}-onnx/{version}")
    session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = ingest.prepare(Config().data, Config().training.seed).split("val")[0][:8].astype(np.float32) / 255
    assert session.run(None, {"input": x})[0].shape == (8, 10)

    # A second export of the same layout, its external data changed on disk: an error, not a verdict.
    tampered_id = export()
    header = logged_model_dir(tampered_id) / "model.onnx"
    header_sha = hashlib.sha256(header.read_bytes()).hexdigest()
    data_file = logged_model_dir(tampered_id) / "model.onnx.data"
    raw = bytearray(data_file.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data_file.write_bytes(bytes(raw))
    assert hashlib.sha256(header.read_bytes()).hexdigest() == header_sha  # a header-only hash would miss this
    before = registry_state()
    result = invoke("validate", "--export-run-id", tampered_id, "--quiet")
    assert result.exit_code == 1, result.stdout + result.stderr
    assert "not the one exported" in result.stderr and "model.onnx.data" in result.stderr
    assert registry_state() == before


def test_bad_external_data_setting_is_a_usage_error(store: Path, first, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAMPION_ONNX_EXTERNAL_DATA_BYTES", "two gigabytes")
    result = invoke("export", "--model-name", NAME, "--quiet")
    assert result.exit_code == 2 and "CHAMPION_ONNX_EXTERNAL_DATA_BYTES" in result.stderr
