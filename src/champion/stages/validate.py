"""Quality Gate 2: the exported ONNX model must compute what the PyTorch model computes.

ONNX Runtime and PyTorch (eval mode) run the same inputs, real validation images and uniform random
ones, at each configured batch size. Every output must lie within `atol + rtol * |reference|` and
the top-1 predictions must be identical. Accuracy of both is reported, and the speed-up of ONNX
Runtime over PyTorch is measured after warm-up, excluding session creation. The tolerances and
sample counts are the policy stored on the parent registered model. On pass the ONNX model is
registered as `<name>-onnx` and the `deploy` alias moves (a `gate2 passed` event; under the model's
lease, and only while the exported version is still @champion, unless it was exported as a rollback); on fail, including
a model ONNX Runtime cannot load, a `validation_failure_report.json` is logged and the registry is
not touched. ONNX files that differ from the ones hashed at export are an IntegrityError (exit 1):
a tampered or damaged artefact store is not an answer about the model.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from champion import evaluate, ingest, names
from champion.errors import ChampionError
from champion.progress import data_progress, say
from champion.registry import exports, history, policy, release, storage, tracking
from champion.registry.exports import ExportRecord

# MLflow and onnxruntime (seconds each) are imported inside the functions that use them, as in the
# other stages: their cost falls on the gate's run, not on importing this module (which costs torch).


@dataclass
class ValidationResult:
    passed: bool
    export_run_id: str
    onnx_model_name: str
    report: dict[str, Any] = field(default_factory=dict)
    model_version: str | None = None

    @property
    def result(self) -> str:
        return "passed" if self.passed else "failed"


def compare(reference: np.ndarray, candidate: np.ndarray, atol: float, rtol: float) -> dict[str, Any]:
    """Element-wise tolerance and top-1 agreement of two (N, classes) outputs. Pure: unit-testable."""
    diff = np.abs(candidate.astype(np.float64) - reference.astype(np.float64))
    allowed = atol + rtol * np.abs(reference.astype(np.float64))
    top1 = candidate.argmax(1) == reference.argmax(1)
    return {
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "within_tolerance": bool((diff <= allowed).all()),
        "top1_agreement": float(top1.mean()) if top1.size else 1.0,
        "top1_identical": bool(top1.all()),
    }


def _batched(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([fn(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def _median_seconds(fn: Callable[[], Any], warmup: int = 3, repeats: int = 10) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def validate(export_run_id: str, quiet: bool = False) -> ValidationResult:
    """Run Quality Gate 2 on an export run; register `<name>-onnx` @deploy when it passes.

    The bar (atol, rtol, num_samples, batch_sizes) is the policy stored on the parent registered
    model, never the export's own config. A model ONNX Runtime cannot load is a rejection (its
    error is in the failure report); files that differ from those hashed at export are an error.

    Raises:
        ChampionError: not an export run, or its version never passed Quality Gate 1.
        IntegrityError: the ONNX files are not the ones exported (changed in the artefact store since).
        RegistryError: MLflow could not be reached.
    """
    import mlflow
    import onnxruntime as ort

    tracking.setup_tracking(quiet)
    run = tracking.get_run(export_run_id)
    if names.PARENT_MODEL_NAME not in run.data.tags or names.MODEL_URI not in run.data.tags:
        raise ChampionError(f"run {export_run_id} is not a finished export run (no parent_model_name/model_uri tags)")
    if run.data.tags.get(names.GATE2_RESULT) == "passed" and names.GATE2_MODEL_VERSION in run.data.tags:
        # Already validated and registered (an orchestrator retrying the step): answer, change nothing.
        name = run.data.tags[names.PARENT_MODEL_NAME]
        return ValidationResult(True, export_run_id, names.onnx_name(name), {}, run.data.tags[names.GATE2_MODEL_VERSION])
    record = exports.read(export_run_id)
    name = record.parent_model_name
    parent = exports.resolve_version(name, version=record.parent_model_version)
    exports.require_gate1_pass(parent)
    bar = policy.require(name)
    ec = bar.export
    # The run's config still says which data to compare on; it no longer says how close is close enough.
    cfg = tracking.load_run_config(record.parent_run_id)
    bar_report = policy.report(bar, policy.Policy.from_config(cfg))

    with tempfile.TemporaryDirectory() as tmp:
        with tracking.registry_errors(f"load {record.parent_model_uri} and the exported ONNX model"):
            # Both read in place from a local store (a read-only one works), hash-checked before use.
            reference = storage.load_pytorch(parent, Path(tmp) / "reference")[0].eval()
            onnx_dir = storage.model_dir(run.data.tags[names.MODEL_URI], Path(tmp) / "onnx")
            onnx_file = onnx_dir / mlflow.models.Model.load(str(onnx_dir)).flavors["onnx"]["data"]
        onnx_sha256 = _verify_integrity(onnx_file, record, export_run_id)
        try:
            session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - the model is broken, not the server: a rejection with the reason
            return _reject_unloadable(run, record, exc, onnx_sha256, ec, bar_report)
    input_name = session.get_inputs()[0].name

    real, labels, noise = _inputs(cfg, ec.num_samples, quiet)
    say(f"Quality Gate 2: {len(real)} validation + {len(noise)} random inputs at batch sizes {ec.batch_sizes}", quiet)

    def run_torch(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return reference(torch.from_numpy(x)).numpy()

    def run_onnx(x: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: x})[0]

    measured = _parity(run_torch, run_onnx, real, labels, noise, ec)
    failures = [c for c in measured["checks"] if not (c["within_tolerance"] and c["top1_identical"])]
    report_data = _report(failures, ec, bar_report, record, onnx_sha256, **measured)
    result = ValidationResult(not failures, export_run_id, names.onnx_name(name), report_data)
    c = tracking.client()
    with tracking.registry_errors(f"log Quality Gate 2 results to export run {export_run_id}"):
        c.log_batch(export_run_id, metrics=_metrics({
            "validation_max_abs_diff": measured["max_abs_diff"],
            "validation_speedup": measured["speed"]["speedup"],
            "validation_accuracy_onnx": report_data["accuracy"]["onnx"],
            "validation_accuracy_pytorch": report_data["accuracy"]["pytorch"],
        }))  # fmt: skip
        c.log_dict(export_run_id, report_data, names.GATE2_REPORT if result.passed else names.GATE2_FAILURE_REPORT)
    if result.passed:
        result.model_version = _register(result.onnx_model_name, run, record, quiet)
    _tag_result(result, record)
    return result


def _inputs(cfg, num_samples: int, quiet: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validation images (seeded pick) with their labels, and as many uniform random inputs."""
    with data_progress(quiet) as report:
        data = ingest.prepare(cfg.data, cfg.training.seed, report, splits=("val",))  # parity needs no more
    x_val, y_val = data.split("val")
    pick = np.random.default_rng(cfg.training.seed).permutation(len(y_val))[:num_samples]
    real = evaluate.to_float(x_val[pick]).numpy()
    noise = np.random.default_rng(cfg.training.seed + 1).random((len(real), *real.shape[1:]), dtype=np.float32)
    return real, y_val[pick], noise


def _parity(run_torch: Callable, run_onnx: Callable, real: np.ndarray, labels: np.ndarray, noise: np.ndarray, ec) -> dict[str, Any]:
    """Both models on the same inputs at every batch size: the checks, accuracy of both, and their speed."""
    checks = []
    for inputs, kind in ((real, "validation"), (noise, "random")):
        for bs in ec.batch_sizes:
            row = compare(_batched(run_torch, inputs, bs), _batched(run_onnx, inputs, bs), ec.atol, ec.rtol)
            checks.append({"inputs": kind, "batch_size": bs, **row})
    torch_pred = run_torch(real).argmax(1)
    onnx_pred = run_onnx(real).argmax(1)
    batch = real[: max(ec.batch_sizes)]
    torch_s = _median_seconds(lambda: run_torch(batch))
    onnx_s = _median_seconds(lambda: run_onnx(batch))
    return {
        "max_abs_diff": max(c["max_abs_diff"] for c in checks),
        "checks": checks,
        "accuracy": {"pytorch": evaluate.accuracy(labels, torch_pred), "onnx": evaluate.accuracy(labels, onnx_pred), "samples": len(labels)},
        "speed": {"batch_size": len(batch), "pytorch_ms": torch_s * 1000, "onnxruntime_ms": onnx_s * 1000, "speedup": torch_s / onnx_s},
    }


def _tag_result(result: ValidationResult, record: ExportRecord) -> None:
    tags = {names.GATE2_RESULT: result.result}
    if result.model_version:
        tags[names.GATE2_MODEL_VERSION] = result.model_version
    tracking.set_tags(result.export_run_id, tags)
    tracking.set_tags(record.parent_run_id, tags)


def _verify_integrity(onnx_file: Path, record: ExportRecord, export_run_id: str) -> str:
    """The content hash of the downloaded ONNX files, which must be the one recorded at export.

    Raises:
        IntegrityError: a file changed, went missing or was added since export.
    """
    again = f"export again with `champion export --model-name {record.parent_model_name} --version {record.parent_model_version}`"
    remedy = exports.Remedy(
        f"do not deploy it: {again}",
        f"The artefact store was changed after export; the registry is untouched. Do not deploy it: {again}",
    )
    return exports.verify(onnx_file, record, f"the ONNX model of export run {export_run_id}", remedy)[0]


def _report(failures: list[dict], ec, bar_report: dict, record: ExportRecord, onnx_sha256: str, **measured: Any) -> dict[str, Any]:
    """The Gate 2 report: verdict, the bar that judged, what was measured, and the file that was validated."""
    return {
        "gate": "quality_gate_2",
        "result": "failed" if failures else "passed",
        "tolerance": {"atol": ec.atol, "rtol": ec.rtol, "rule": "|onnx - torch| <= atol + rtol * |torch|"},
        "policy": bar_report,
        **measured,
        "failures": failures,
        "onnx_sha256": {"exported": record.onnx_sha256, "validated": onnx_sha256},
    }


def _reject_unloadable(run, record: ExportRecord, exc: Exception, onnx_sha256: str, ec, bar_report: dict) -> ValidationResult:
    """ONNX Runtime refused the exported model: a Gate 2 rejection whose report names the loader's error."""
    export_run_id = run.info.run_id
    error = f"{type(exc).__name__}: {str(exc).strip()[:2000]}"
    report_data = _report([{"check": "onnxruntime_load", "error": error}], ec, bar_report, record, onnx_sha256, max_abs_diff=None, checks=[])
    with tracking.registry_errors(f"log Quality Gate 2 results to export run {export_run_id}"):
        tracking.client().log_dict(export_run_id, report_data, names.GATE2_FAILURE_REPORT)
    result = ValidationResult(False, export_run_id, names.onnx_name(record.parent_model_name), report_data)
    _tag_result(result, record)
    return result


def _metrics(values: dict[str, float]):
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, 0) for k, v in values.items()]


def _register(onnx_name: str, run, record: ExportRecord, quiet: bool = False) -> str:
    """Register the ONNX model and move `deploy` to it, under the parent model's lease (`release.release_for_deploy`)."""
    tags = release.export_tags(record, run.info.run_id, record.onnx_sha256)
    if record.onnx_size_bytes is not None:
        tags[storage.ONNX_SIZE_TAG] = str(record.onnx_size_bytes)
    tags[names.GATE2_RESULT] = "passed"
    passed = release.Release(
        record.parent_model_name, onnx_name, run.data.tags[names.MODEL_URI], run.info.run_id, tags, tracking.DEPLOY_ALIAS,
        history.GATE2_PASSED, (run.info.run_id, names.GATE2_REPORT),
        {"export_run_id": run.info.run_id, "parent_model_version": record.parent_model_version, "export_reason": record.export_reason},
    )  # fmt: skip
    purpose = f"gate2 export run {run.info.run_id}"
    return release.release_for_deploy(passed, record, skip_tag=names.GATE2_DEPLOY, gate="Quality Gate 2", purpose=purpose, quiet=quiet)
