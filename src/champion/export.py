"""Export: turn a registered model version into ONNX (and TorchScript) in an export run.

The export run lives in the `model-exports` experiment as `export-<name>-v<version>` and holds the
ONNX model as an MLflow onnx flavour (one file; external data only past protobuf's 2 GB limit),
`metadata.json` tracing it back to the training run, and the TorchScript file when asked for. An
export counts only after Quality Gate 2 (`champion.validate`) has checked its numbers.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from champion import tracking
from champion.errors import ChampionError, ExportError

PROTOBUF_LIMIT = 2 * 1024**3


@dataclass
class ExportResult:
    export_run_id: str
    model_name: str
    version: str
    onnx_sha256: str


def resolve_version(name: str, alias: str | None = None, version: str | None = None):
    """The model version named by alias or number, with a clear error when there is none."""
    c = tracking.client()
    what = f"version {version}" if version else f"alias @{alias}"
    with tracking.registry_errors(f"look up {name!r} {what}"):
        try:
            if version:
                return c.get_model_version(name, version)
            aliased = c.get_registered_model(name).aliases.get(alias)
            if aliased is None:  # MLflow answers a missing alias with a generic error: ask plainly
                raise ChampionError(
                    f"registered model {name!r} has no alias @{alias}; run `champion promote --run-id RUN_ID` first "
                    "or give --version"
                )
            return c.get_model_version(name, str(aliased))
        except Exception as exc:
            if tracking.is_not_found(exc):
                raise ChampionError(
                    f"registered model {name!r} has no {what}; run `champion promote --run-id RUN_ID` first "
                    "or check --model-name"
                ) from None
            raise


def export(model_name: str, alias: str | None = "champion", version: str | None = None, quiet: bool = False) -> ExportResult:
    """Export a registered model version to the configured formats and log them in an export run.

    Raises:
        ChampionError: no such model version.
        ExportError: the exporter or the ONNX checker failed (the export run is marked FAILED).
    """
    import mlflow

    from champion.progress import say

    tracking.setup_tracking()
    mv = resolve_version(model_name, alias, version)
    cfg = tracking.load_run_config(mv.run_id)
    uri = f"models:/{model_name}/{mv.version}"
    with tracking.registry_errors(f"load {uri}"):
        info = mlflow.models.get_model_info(uri)
        model = mlflow.pytorch.load_model(uri, map_location="cpu").eval()
    pre = info.metadata["preprocessing"]
    example = torch.rand(2, pre["channels"], *pre["image_size"])

    with tracking.registry_errors(f"start an export run in {tracking.EXPORT_EXPERIMENT!r}"):
        mlflow.set_experiment(tracking.EXPORT_EXPERIMENT)
        run = mlflow.start_run(run_name=f"export-{model_name}-v{mv.version}")
    with run, tempfile.TemporaryDirectory(prefix="champion-export-") as tmp:
        mlflow.set_tags({"parent_run_id": mv.run_id, "parent_model_name": model_name, "parent_model_version": mv.version})
        say(f"exporting {model_name} v{mv.version} to {', '.join(cfg.export.formats)}", quiet)
        started = time.perf_counter()
        onnx_path = Path(tmp) / "model.onnx"
        _to_onnx(model, example, onnx_path, cfg.export.opset)
        files = {"onnx": onnx_path}
        if "torchscript" in cfg.export.formats:
            files["torchscript"] = Path(tmp) / "model.pt"
            _to_torchscript(model, example, files["torchscript"])
        duration = time.perf_counter() - started

        import onnx

        digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
        metadata = {
            "parent_run_id": mv.run_id,
            "parent_model_name": model_name,
            "parent_model_version": str(mv.version),
            "parent_model_uri": uri,
            "data_digest": mv.tags.get("data.digest"),
            "preprocessing": pre,
            "input": {"name": "input", "dtype": "float32", "shape": ["batch", pre["channels"], *pre["image_size"]], "range": [0, 1]},
            "output": {"name": "logits", "shape": ["batch", len(pre["classes"])]},
            "opset": cfg.export.opset,
            "formats": cfg.export.formats,
            "onnx_sha256": digest,
            "torch_version": torch.__version__,
            "onnx_version": onnx.__version__,
        }
        mlflow.log_dict(metadata, "metadata.json")
        if "torchscript" in files:
            mlflow.log_artifact(str(files["torchscript"]), "torchscript")
        logged = mlflow.onnx.log_model(
            onnx.load(str(onnx_path)),
            name="model",
            pip_requirements=[f"onnx=={onnx.__version__}", "onnxruntime"],
            # One self-contained file unless protobuf cannot hold it.
            save_as_external_data=onnx_path.stat().st_size >= PROTOBUF_LIMIT,
            metadata={"preprocessing": pre, "parent_model_uri": uri},
        )
        mlflow.set_tag("model_uri", logged.model_uri)
        mlflow.log_metrics({"export_duration_seconds": duration, "onnx_file_size_mb": onnx_path.stat().st_size / 1e6})
        result = ExportResult(run.info.run_id, model_name, str(mv.version), digest)
    tracking.set_tags(mv.run_id, {"export.run_id": result.export_run_id})
    return result


def _to_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    import onnx

    large = sum(p.numel() * p.element_size() for p in model.state_dict().values()) >= PROTOBUF_LIMIT
    # torchvision's Normalize makes its mean/std constants while tracing: exactly what we want.
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    try:
        # The TorchScript-based exporter: ~0.1 s for a small CNN where the dynamo exporter takes ~3 s,
        # and a dynamic batch axis without guards.
        torch.onnx.export(
            model, (example,), str(path), input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset,
            dynamo=False, external_data=large,
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


def load_metadata(export_run_id: str) -> dict:
    return json.loads(tracking.read_artifact(export_run_id, "metadata.json"))
