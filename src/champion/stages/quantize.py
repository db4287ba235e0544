"""The int8 gate: quantize a validated ONNX export to int8 and ship it only if it keeps the float model's accuracy.

Input: an export run whose float ONNX model passed Quality Gate 2. The model is quantized
(`champion.stages.int8`: ONNX Runtime static quantization, QDQ format) with calibration images from
the training split (never the validation split), then the float and the int8 ONNX models both
classify the whole validation split. The gate passes when

    float accuracy - int8 accuracy <= export.int8.max_accuracy_drop

where the bar is the policy stored on the registered model (`champion.registry.policy`), never the run's own
config; a model whose policy was stored before the int8 gate existed is held to the default, 0.01.
Top-1 agreement between the two models, the file size ratio and the latency ratio (batch 1 and 32,
median after warm-up, sessions created before timing, the two models timed in turns) are reported,
never assumed: on a small CNN int8 can be slower than float.

Everything lands in a run of its own in `model-exports`, `int8-<name>-v<version>`: the int8 model
(MLflow onnx flavour, tag `int8.model_uri`), `metadata.json` (the export's, with the int8 file's
hash), `int8_gate_report.json` (pass or fail) and metrics `int8_*`. Its own run, so that the export
run stays what Gate 2 validated and a rejected int8 model is kept for inspection without touching it.
On pass the model is registered as `<name>-onnx-int8` and its `deploy` alias moves through
`history.move_alias` (event `int8 gate passed`, under the model's lease; like Gate 2, only while the
exported version is still @champion unless it was exported as a rollback). On fail, including a
graph ONNX Runtime cannot quantize or load, the registry is untouched.

A rejection is an answer, not a failure of the float pipeline: `champion run` prints
`INT8_RESULT=failed` and keeps the exit code of the float gates, and `champion quantize` exits 0.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from champion import ingest, names
from champion.config import parse_override
from champion.errors import ChampionError, ConfigError
from champion.progress import data_progress, say
from champion.registry import exports, history, integrity, policy, release, tracking
from champion.registry.exports import ExportRecord
from champion.stages import int8

# MLflow, onnx and onnxruntime, and champion.stages.export (torch), are imported inside the functions that
# use them (seconds each): `champion run` imports this module at start-up, and only an int8 export
# (export.formats with onnx_int8, after a Gate 2 pass) needs them.

REPORT = names.INT8_REPORT
RESULT_TAG = names.INT8_GATE_RESULT  # on the registered version: what `deploy triton` and `serve` require
LATENCY_BATCH_SIZES = (1, 32)
EVAL_BATCH = 256  # images per ONNX Runtime run when classifying the validation split
WARMUP, REPEATS = 3, 15


@dataclass
class Int8Result:
    passed: bool
    export_run_id: str
    int8_run_id: str | None
    model_name: str  # <name>-onnx-int8
    report: dict[str, Any] = field(default_factory=dict)
    model_version: str | None = None

    @property
    def result(self) -> str:
        return "passed" if self.passed else "failed"

    def outputs(self) -> dict[str, str]:
        """The KEY=value lines of `champion quantize` and of `champion run`'s int8 gate."""
        values = {"INT8_RESULT": self.result}
        if self.int8_run_id:
            values["INT8_RUN_ID"] = self.int8_run_id
        if self.model_version:
            values["INT8_MODEL_VERSION"] = str(self.model_version)
        return values

    def summary(self) -> str:
        """One line for the progress output: the verdict and what was measured."""
        r = self.report
        if "accuracy" not in r:
            return f"int8 gate {self.result}: {(r.get('failures') or [{}])[0].get('error', 'already validated')}"
        a, lat = r["accuracy"], r["latency"]
        speed = ", ".join(f"batch {b} {lat[f'batch_{b}']['speedup']:.2f}x" for b in LATENCY_BATCH_SIZES)
        return (
            f"int8 gate {self.result}: accuracy {a['float']:.4f} -> {a['int8']:.4f} (drop {a['drop']:+.4f}, at most "
            f"{r['max_accuracy_drop']:.4f}), top-1 agreement {r['top1_agreement']:.4f}, size {r['size']['ratio']:.2f}x, "
            f"speed-up over float {speed} (measured)"
        )




def gate(export_run_id: str, quiet: bool = False, overrides: list[str] | None = None) -> Int8Result:
    """Quantize the export run's ONNX model to int8, judge it, and register `<name>-onnx-int8` @deploy on pass.

    Args:
        export_run_id: An export run whose ONNX model passed Quality Gate 2.
        quiet: No progress output.
        overrides: `export.int8.KEY=VALUE` settings over the training run's config, to quantize again
            another way (say another calibration source) without training again. They change how the
            model is quantized, never the bar: `max_accuracy_drop` is the stored policy's.

    Raises:
        ConfigError: an override of anything but `export.int8.*`, or a bad value.
        ChampionError: not an export run, one whose model has not passed Quality Gate 2 (or Gate 1),
            a model with external data, or no calibration images left.
        IntegrityError: the exported ONNX files are not the ones hashed at export.
        RegistryError: MLflow could not be reached.
    """
    import mlflow

    _check_overrides(overrides)
    tracking.setup_tracking(quiet)
    tags = tracking.get_run(export_run_id).data.tags
    answered = _already_judged(export_run_id, tags, overrides)
    if answered is not None:
        return answered
    name = tags[names.PARENT_MODEL_NAME]
    record, cfg, bar_report, max_drop = _bar(export_run_id, name, overrides)

    with tempfile.TemporaryDirectory(prefix="champion-int8-") as tmp:
        with tracking.registry_errors(f"download the ONNX model of export run {export_run_id}"):
            float_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=tags[names.MODEL_URI], dst_path=str(Path(tmp) / "float")))
            float_model = mlflow.models.Model.load(str(float_dir))
        float_file = float_dir / float_model.flavors["onnx"]["data"]
        float_sha256 = _verify(float_file, record, export_run_id)
        data, calibration = _data(cfg, record, name, quiet)
        x_val, y_val = data.split("val")
        say(f"int8 gate: quantizing {name} v{record.parent_model_version} with {calibration.report['samples']} calibration images, "
            f"judging on {len(y_val)} validation images", quiet)  # fmt: skip
        base = {"export_run_id": export_run_id, "float_onnx_sha256": float_sha256, "max_accuracy_drop": max_drop,
                "policy": bar_report, "overrides": list(overrides or []), "calibration": calibration.report}  # fmt: skip
        judged = _judge_in_run(export_run_id, record, cfg.export.int8, float_file, float_model, calibration, data, base, Path(tmp))
    result = Int8Result(judged.passed, export_run_id, judged.run_id, names.int8_name(name), judged.report)
    if result.passed:
        result.model_version = _register(result.model_name, judged.model_uri, judged.run_id, export_run_id, record, judged.sha256, quiet)
    # The latest attempt's: a rejection after an earlier pass says "none", not the earlier version.
    export_tags = {names.INT8_RESULT: result.result, names.INT8_RUN_ID: judged.run_id, names.INT8_MODEL_VERSION: result.model_version or "none"}
    tracking.set_tags(export_run_id, export_tags)
    return result


def _check_overrides(overrides: list[str] | None) -> None:
    for text in overrides or []:
        key = parse_override(text)[0]
        if not key.startswith("export.int8."):
            raise ConfigError(f"--set {key}: champion quantize changes only export.int8.* (how to quantize); the rest is the training run's")


def _already_judged(export_run_id: str, tags: dict[str, str], overrides: list[str] | None) -> Int8Result | None:
    """The earlier verdict when this export already passed (an orchestrator retrying the step), else None.

    Raises:
        ChampionError: not a finished export run, or one that has not passed Quality Gate 2.
    """
    if names.PARENT_MODEL_NAME not in tags or names.MODEL_URI not in tags:
        raise ChampionError(f"run {export_run_id} is not a finished export run (no parent_model_name/model_uri tags)")
    name = tags[names.PARENT_MODEL_NAME]
    if tags.get(names.INT8_RESULT) == "passed" and names.INT8_MODEL_VERSION in tags and not overrides:
        # Already judged and registered: answer, change nothing.
        return Int8Result(True, export_run_id, tags.get(names.INT8_RUN_ID), names.int8_name(name), {}, tags[names.INT8_MODEL_VERSION])
    if tags.get(names.GATE2_RESULT) != "passed":
        raise ChampionError(
            f"export run {export_run_id} has not passed Quality Gate 2 (gate2.result={tags.get(names.GATE2_RESULT, 'unset')}): "
            f"the int8 model is judged against the validated float model. Run `champion validate --export-run-id {export_run_id}` first"
        )
    return None


def _bar(export_run_id: str, name: str, overrides: list[str] | None) -> tuple[ExportRecord, Any, dict, float]:
    """The export record, the training run's config (with `overrides`), the policy report and the bar."""
    record = exports.read(export_run_id)
    if record.external_data:
        raise ChampionError(f"{name} v{record.parent_model_version} is exported with external data (2 GB or more); int8 quantization of such models is not supported")
    exports.require_gate1_pass(exports.resolve_version(name, version=record.parent_model_version))
    bar = policy.require(name)
    cfg = tracking.load_run_config(record.parent_run_id, overrides)  # which data, and how to calibrate; not the bar
    return record, cfg, policy.report(bar, policy.Policy.from_config(cfg)), bar.export.int8.max_accuracy_drop


def _data(cfg, record: ExportRecord, name: str, quiet: bool):
    """The training run's data (train and val splits) and the calibration images drawn from it."""
    with data_progress(quiet) as progress:
        data = ingest.prepare(cfg.data, cfg.training.seed, progress, splits=("train", "val"))
        if record.data_digest and data.digest != record.data_digest:
            # Another draw of the split: the validation images could include ones the model trained on.
            raise ChampionError(
                f"the data at {cfg.data.source} changed since {name} v{record.parent_model_version} trained (digest "
                f"{data.digest}, the export recorded {record.data_digest}): the int8 model cannot be judged on that "
                "model's validation split. Nothing was quantized or registered; train, promote and export a new model"
            )
        return data, int8.calibration_set(cfg.export.int8, cfg.data, cfg.training.seed, data, progress)


@dataclass
class _Judged:
    passed: bool
    run_id: str
    report: dict[str, Any]
    model_uri: str | None = None  # the logged int8 model (a rejected quantization logs none)
    sha256: str | None = None


def _judge_in_run(export_run_id: str, record: ExportRecord, settings, float_file: Path, float_model, calibration, data, base: dict, tmp: Path) -> _Judged:
    """Quantize and judge in an int8 run of its own; a graph that cannot be quantized is a rejection."""
    import mlflow
    import onnxruntime as ort

    name = record.parent_model_name
    with tracking.registry_errors(f"start an int8 run in {tracking.EXPORT_EXPERIMENT!r}"):
        mlflow.set_experiment(tracking.EXPORT_EXPERIMENT)
        int8_run = mlflow.start_run(run_name=f"int8-{name}-v{record.parent_model_version}")
    with int8_run:
        run_id = int8_run.info.run_id
        mlflow.set_tags({
            names.PARENT_EXPORT_RUN_ID: export_run_id, names.PARENT_RUN_ID: record.parent_run_id, names.PARENT_MODEL_NAME: name,
            names.PARENT_MODEL_VERSION: record.parent_model_version, names.EXPORT_REASON: record.export_reason,
            names.INT8_CALIBRATION_SOURCE: calibration.report["source"], names.INT8_CALIBRATION_SAMPLES: str(calibration.report["samples"]),
        })  # fmt: skip
        build = tmp / "build"
        build.mkdir()
        int8_file = build / names.ONNX_FILE
        try:
            int8.quantize(float_file, int8_file, calibration.images, settings)
            options = ort.SessionOptions()
            options.log_severity_level = 3
            sessions = [ort.InferenceSession(str(f), options, providers=["CPUExecutionProvider"]) for f in (float_file, int8_file)]
        except (OSError, MemoryError):
            raise  # the machine (disk, memory), not the model: an error, never a rejection
        except Exception as exc:  # noqa: BLE001 - a graph that cannot be quantized or loaded is a rejection, with the reason
            report = _report(base, [{"check": "quantize", "error": f"{type(exc).__name__}: {str(exc).strip()[:2000]}"}])
            mlflow.log_dict(report, REPORT)
            mlflow.set_tag(names.INT8_RESULT, "failed")
            return _Judged(False, run_id, report)
        x_val, y_val = data.split("val")
        measured = _measure(sessions, x_val, y_val)
        measured["size"] = _sizes(float_file, int8_file)
        measured["evaluation"] = {"split": "val", "samples": int(len(y_val)), "source": data.source, "data_digest": data.digest,
                                  "training_data_digest": record.data_digest}  # fmt: skip
        drop, max_drop = measured["accuracy"]["drop"], base["max_accuracy_drop"]
        failures = [] if drop <= max_drop + 1e-12 else [
            {"check": "accuracy_drop", "required": f"<= {max_drop:.4f}", "measured": drop}
        ]  # fmt: skip
        report = _report(base, failures, **measured)
        int8_uri, int8_sha256 = _log_model(int8_file, float_model, record, report, run_id, tmp / "logged")
        mlflow.log_dict(report, REPORT)
        mlflow.log_metrics({
            "int8_accuracy_drop": drop, "int8_accuracy": measured["accuracy"]["int8"],
            "float_accuracy": measured["accuracy"]["float"], "int8_top1_agreement": measured["top1_agreement"],
            "int8_size_ratio": measured["size"]["ratio"], "onnx_file_size_mb": measured["size"]["int8_bytes"] / 1e6,
            **{f"int8_speedup_batch_{b}": measured["latency"][f"batch_{b}"]["speedup"] for b in LATENCY_BATCH_SIZES},
        })  # fmt: skip
        mlflow.set_tags({names.INT8_MODEL_URI: int8_uri, names.INT8_RESULT: "failed" if failures else "passed"})
    return _Judged(not failures, run_id, report, int8_uri, int8_sha256)


def _verify(onnx_file: Path, record: ExportRecord, export_run_id: str) -> str:
    """The float model's hash, which must be the one recorded at export (what Gate 2 validated)."""
    remedy = exports.Remedy("nothing was quantized or registered", "Nothing was quantized or registered; export again")
    return exports.verify(onnx_file, record, f"the ONNX model of export run {export_run_id}", remedy)[0]


def _predict(session, x: np.ndarray) -> np.ndarray:
    name = session.get_inputs()[0].name
    out = [session.run(None, {name: x[i : i + EVAL_BATCH].astype(np.float32) / 255.0})[0] for i in range(0, len(x), EVAL_BATCH)]
    return np.concatenate(out).argmax(1)


def _interleaved_ms(fns: list[Callable[[], Any]]) -> list[float]:
    """Median milliseconds of each function, after warm-up, timed in turns so that load on a shared
    machine falls on both alike; the ratio of the medians is what is reported."""
    for fn in fns:
        for _ in range(WARMUP):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(REPEATS):
        for fn, acc in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    return [statistics.median(t) * 1000 for t in times]


def _measure(sessions: list, x_val: np.ndarray, y_val: np.ndarray) -> dict[str, Any]:
    """Accuracy of both models on the validation split, their top-1 agreement and their latency."""
    float_pred, int8_pred = (_predict(s, x_val) for s in sessions)
    float_acc, int8_acc = float((float_pred == y_val).mean()), float((int8_pred == y_val).mean())
    latency: dict[str, Any] = {}
    name = sessions[0].get_inputs()[0].name
    for bs in LATENCY_BATCH_SIZES:
        batch = (np.resize(x_val, (bs, *x_val.shape[1:])).astype(np.float32) / 255.0)  # repeats images when val is small
        float_ms, int8_ms = _interleaved_ms([lambda s=s: s.run(None, {name: batch}) for s in sessions])
        latency[f"batch_{bs}"] = {"float_ms": float_ms, "int8_ms": int8_ms, "ratio": int8_ms / float_ms, "speedup": float_ms / int8_ms}
    latency["method"] = (
        f"median of {REPEATS} runs after {WARMUP} warm-up runs, ONNX Runtime CPU sessions created before timing, "
        "float and int8 timed in turns; ratio = int8/float (below 1: int8 is faster), speedup = float/int8"
    )
    return {
        "accuracy": {"float": float_acc, "int8": int8_acc, "drop": float_acc - int8_acc, "samples": int(len(y_val)), "split": "val"},
        "top1_agreement": float((float_pred == int8_pred).mean()),
        "latency": latency,
    }


def _sizes(float_file: Path, int8_file: Path) -> dict[str, Any]:
    f, q = float_file.stat().st_size, int8_file.stat().st_size
    return {"float_bytes": f, "int8_bytes": q, "ratio": q / f}


def _report(base: dict[str, Any], failures: list[dict], **measured: Any) -> dict[str, Any]:
    return {
        "gate": "int8_gate",
        "result": "failed" if failures else "passed",
        "rule": "float accuracy - int8 accuracy <= max_accuracy_drop, on the validation split",
        **base,
        **measured,
        "failures": failures,
    }


def _log_model(int8_file: Path, float_model, record: ExportRecord, report: dict, run_id: str, readback: Path) -> tuple[str, str]:
    """Log the int8 model (onnx flavour) and its metadata.json; return its model URI and the hash of what the store holds."""
    import mlflow
    import onnx

    logged = mlflow.onnx.log_model(
        onnx.load(str(int8_file)), name="model", pip_requirements=[f"onnx=={onnx.__version__}", "onnxruntime"],
        # One self-contained file (mlflow.onnx would split tensors out): a quarter of a float model
        # under 2 GB (larger ones are refused above) always fits protobuf's limit.
        save_as_external_data=False, signature=float_model.signature, metadata={"preprocessing": record.preprocessing, "parent_model_uri": record.parent_model_uri, "quantization": "int8"},
    )  # fmt: skip
    # Hash what the store holds, read back, as export does: deploy triton and serve check against it.
    with tracking.registry_errors(f"read back the logged int8 model {logged.model_uri}"):
        stored = Path(mlflow.artifacts.download_artifacts(artifact_uri=logged.model_uri, dst_path=str(readback)))
    stored_onnx = stored / mlflow.models.Model.load(str(stored)).flavors["onnx"]["data"]
    digest, onnx_files = integrity.onnx_sha256(stored_onnx)
    record.int8(
        float_export_run_id=report["export_run_id"], float_onnx_sha256=report["float_onnx_sha256"], onnx_sha256=digest,
        onnx_files=onnx_files, quantization={"format": "QDQ", "activations": "uint8", "weights": "int8", **report["calibration"]},
    ).log()  # fmt: skip
    return logged.model_uri, digest


def _register(int8_model: str, model_uri: str, run_id: str, export_run_id: str, record: ExportRecord, sha256: str, quiet: bool) -> str:
    """Register the int8 model and move its `deploy` alias, under the parent model's lease (as Gate 2 does)."""
    tags = {**release.export_tags(record, run_id, sha256), names.PARENT_EXPORT_RUN_ID: export_run_id, RESULT_TAG: "passed"}
    passed = release.Release(
        record.parent_model_name, int8_model, model_uri, run_id, tags, tracking.DEPLOY_ALIAS, history.INT8_PASSED, (run_id, REPORT),
        {"int8_run_id": run_id, "parent_model_version": record.parent_model_version, "export_reason": record.export_reason},
    )  # fmt: skip
    purpose = f"int8 gate run {run_id}"
    return release.release_for_deploy(passed, record, skip_tag=names.INT8_GATE_DEPLOY, gate="the int8 gate", purpose=purpose, quiet=quiet)
