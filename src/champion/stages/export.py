"""Export: turn a registered model version into ONNX (and TorchScript) in an export run.

The export run lives in the `model-exports` experiment as `export-<name>-v<version>` and holds the
ONNX model as an MLflow onnx flavour with a signature (one file; `model.onnx` plus the external-data
file `model.onnx.data` when the parameters reach `integrity.external_data_threshold()`, about 2 GB),
`metadata.json` tracing it back to the training run and recording the content hash of every ONNX
file, and the TorchScript file when asked for. Only versions that passed Quality Gate 1 are
exported. An export counts only after Quality Gate 2 (`champion.stages.validate`) has checked its numbers.
With `tracking.artifact_location` set, the ONNX model is written once to that shared storage instead
(`champion.registry.storage`) and the run's `model_uri` tag names the folder there.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from champion import names
from champion.errors import ExportError
from champion.progress import say
from champion.registry import integrity, storage, tracking
from champion.registry.exports import ExportRecord, require_gate1_pass, resolve_version

# MLflow and onnx (seconds to import) are imported inside the functions that use them: the cost falls
# on the call that needs them, not on importing this module (Gate 2 and the int8 gate import it for
# `resolve_version` and `require_gate1_pass`).

# The external-data file of a large model, beside model.onnx (a fixed name: onnx would pick a uuid).
EXTERNAL_DATA_FILE = names.ONNX_EXTERNAL_DATA


@dataclass
class ExportResult:
    export_run_id: str
    model_name: str
    version: str
    onnx_sha256: str


def export(model_name: str, alias: str | None = "champion", version: str | None = None, quiet: bool = False) -> ExportResult:
    """Export a registered model version to the configured formats and log them in an export run.

    Only versions that passed Quality Gate 1 are exported. A version that passed but is no longer
    the current @champion is exported on purpose (that is how a rollback ships) and the export run
    says so: tag `export.reason=rollback` and `export_reason` in metadata.json.

    Raises:
        ChampionError: no such model version, or it never passed Quality Gate 1.
        ExportError: the exporter or the ONNX checker failed (the export run is marked FAILED).
    """
    import mlflow
    from mlflow.models import infer_signature

    tracking.setup_tracking(quiet)
    mv = resolve_version(model_name, alias, version)
    require_gate1_pass(mv)
    # Only the number of the @champion version is needed: the registered model's aliases hold it.
    current = tracking.champion_number(tracking.registered_model(model_name))
    reason = "champion" if current == str(mv.version) else "rollback"
    cfg = tracking.load_run_config(tracking.version_run_id(mv))
    shared = cfg.tracking.artifact_location
    if shared:
        storage.check_location(shared, mlflow.get_tracking_uri())  # before any work: a server would refuse it
    uri = f"models:/{model_name}/{mv.version}"
    with tempfile.TemporaryDirectory(prefix="champion-load-") as scratch:
        # Read in place from a local store (never through models:/, which writes into the model's folder)
        # and checked against the hash the version was registered with.
        model, pre = storage.load_pytorch(mv, Path(scratch))
    model = model.eval()
    example = torch.rand(2, pre["channels"], *pre["image_size"])
    with torch.inference_mode():
        reference = model(example).numpy()
    # Decided from the model's real size: a file that could not be written has no size to measure.
    param_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    external = param_bytes >= integrity.external_data_threshold()

    with tracking.registry_errors(f"start an export run in {tracking.EXPORT_EXPERIMENT!r}"):
        mlflow.set_experiment(tracking.EXPORT_EXPERIMENT)
        run = mlflow.start_run(run_name=f"export-{model_name}-v{mv.version}")
    with run, tempfile.TemporaryDirectory(prefix="champion-export-") as tmp:
        mlflow.set_tags({
            names.PARENT_RUN_ID: tracking.version_run_id(mv), names.PARENT_MODEL_NAME: model_name, names.PARENT_MODEL_VERSION: mv.version,
            names.EXPORT_REASON: reason, names.EXPORT_CURRENT_CHAMPION: current or "none",
            names.ONNX_EXTERNAL_DATA_TAG: str(external).lower(),
        })  # fmt: skip
        if reason == "rollback":
            say(f"{model_name} v{mv.version} is not the current @champion (v{current or 'none'}): exporting it as a rollback", quiet)
        say(f"exporting {model_name} v{mv.version} to {', '.join(cfg.export.formats)}", quiet)
        started = time.perf_counter()
        onnx_path, torchscript = _build(model, example, Path(tmp), cfg.export, external)
        duration = time.perf_counter() - started

        import onnx

        flavour = dict(
            onnx_model=onnx.load(str(onnx_path)),
            pip_requirements=[f"onnx=={onnx.__version__}", "onnxruntime"],
            signature=infer_signature({"input": example.numpy()}, {"logits": reference}),
            metadata={"preprocessing": pre, "parent_model_uri": uri},
            # One self-contained file unless protobuf cannot hold it; then one named data file beside it.
            save_as_external_data=external,
            **({"location": EXTERNAL_DATA_FILE, "all_tensors_to_one_file": True} if external else {}),
        )
        model_uri, digest, onnx_files, size = _log_onnx(flavour, shared, model_name, run.info.run_id, Path(tmp))
        ExportRecord(
            parent_run_id=tracking.version_run_id(mv), parent_model_name=model_name, parent_model_version=str(mv.version),
            parent_model_uri=uri, export_reason=reason, current_champion_version=current, data_digest=mv.tags.get(names.DATA_DIGEST),
            preprocessing=pre,
            input={"name": "input", "dtype": "float32", "shape": ["batch", pre["channels"], *pre["image_size"]], "range": [0, 1]},
            output={"name": "logits", "shape": ["batch", len(pre["classes"])]},
            opset=cfg.export.opset, formats=cfg.export.formats, onnx_sha256=digest, onnx_hash_scheme=integrity.SCHEME,
            onnx_files=onnx_files, onnx_size_bytes=size, model_location=model_uri, external_data=external,
            parameter_bytes=param_bytes, torch_version=torch.__version__, onnx_version=onnx.__version__,
        ).log()  # fmt: skip
        if torchscript is not None:
            mlflow.log_artifact(str(torchscript), "torchscript")
        _log_results(run.info.run_id, model_uri, {"export_duration_seconds": duration, "onnx_file_size_mb": size / 1e6})
        result = ExportResult(run.info.run_id, model_name, str(mv.version), digest)
    tracking.set_tags(tracking.version_run_id(mv), {names.EXPORT_RUN_ID: result.export_run_id})
    return result


def _build(model: torch.nn.Module, example: torch.Tensor, tmp: Path, ec, external: bool) -> tuple[Path, Path | None]:
    """Write the ONNX graph (and the TorchScript file, when asked for) under `tmp`."""
    build = tmp / "build"
    build.mkdir()
    onnx_path = build / names.ONNX_FILE
    _to_onnx(model, example, onnx_path, ec.opset, external)
    torchscript = None
    if "torchscript" in ec.formats:
        torchscript = tmp / "model.pt"
        _to_torchscript(model, example, torchscript)
    return onnx_path, torchscript


def _log_onnx(flavour: dict, shared: str | None, model_name: str, run_id: str, tmp: Path) -> tuple[str, str, list[str], int]:
    """Log the ONNX model; its URI, and the hash, files and size of what the store holds."""
    import mlflow

    if shared:
        # Written once, straight to shared storage; Gate 2 registers this folder by reference.
        model_uri = storage.export_location(shared, names.onnx_name(model_name), run_id)
        with storage.writing(model_uri) as stored_dir:
            mlflow.onnx.save_model(path=str(stored_dir), mlflow_model=mlflow.models.Model(run_id=run_id), **flavour)
            digest, onnx_files, size = _hash(stored_dir)  # the bytes that go there, before the rename/upload
        return model_uri, digest, onnx_files, size
    model_uri = mlflow.onnx.log_model(name="model", **flavour).model_uri
    # Hash what the store holds (read in place from a local store), so Gate 2 compares like with like.
    return (model_uri, *_hash(storage.model_dir(model_uri, tmp / "logged")))


def _log_results(run_id: str, model_uri: str, metrics: dict[str, float]) -> None:
    """The export run's metrics and its `model_uri` tag, in one request."""
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    with tracking.registry_errors(f"log the results of export run {run_id}"):
        tracking.client().log_batch(
            run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()], tags=[RunTag(names.MODEL_URI, model_uri)]
        )


def _hash(model_dir: Path) -> tuple[str, list[str], int]:
    """The ONNX files' tree hash, the files it covers and their total size, in an MLflow onnx model folder."""
    import mlflow

    stored_onnx = model_dir / mlflow.models.Model.load(str(model_dir)).flavors["onnx"]["data"]
    digest, onnx_files = integrity.onnx_sha256(stored_onnx)
    return digest, onnx_files, sum((stored_onnx.parent / f).stat().st_size for f in onnx_files)


def _to_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int, external: bool) -> None:
    import onnx

    # torchvision's Normalize makes its mean/std constants while tracing: exactly what we want.
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    try:
        # The TorchScript-based exporter: ~0.1 s for a small CNN where the dynamo exporter takes ~3 s,
        # and a dynamic batch axis without guards.
        torch.onnx.export(
            model, (example,), str(path), input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset,
            dynamo=False, external_data=external,
        )  # fmt: skip
        onnx.checker.check_model(str(path))
    except Exception as exc:  # noqa: BLE001 - re-raised as a user-facing error, the run is marked FAILED
        raise ExportError(f"ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:400]}") from exc


def _to_torchscript(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    try:
        with torch.no_grad():
            torch.jit.trace(model, example).save(str(path))
    except Exception as exc:  # noqa: BLE001 - re-raised as a user-facing error
        raise ExportError(f"TorchScript export failed: {type(exc).__name__}: {exc}") from exc
