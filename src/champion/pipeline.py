"""`champion run`: every stage in order, each one the same function its step command calls.

ingest → train → Quality Gate 1 → register @champion → export → Quality Gate 2 → register
<name>-onnx @deploy → model card. A Gate 1 rejection skips export (there is no new champion to
ship) but still writes the model card, which records why the candidate lost.
With `onnx_int8` in `export.formats`, the int8 gate (`champion.stages.quantize`) follows a Gate 2 pass;
its rejection is reported (`INT8_RESULT=failed`), never the run's exit code: the float model has shipped.
An int8 error (not a rejection) still lets the card and the outputs be written (`INT8_RESULT=error`);
then it is raised, so the run exits 1.

Before training, a finished training identical to the one asked for (`champion.train.reuse`: same config,
data, code and seed, deterministic) is looked up; when there is one, it is recorded as this run's
training instead of being repeated, and the gates judge it as they would judge the retrained model
(`force_train` trains anew). Each stage is timed (`champion.timings`).
"""

from __future__ import annotations

import contextlib
import gc
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Iterator

from champion import ingest, names, timings
from champion.config import Config
from champion.errors import EXIT_GATE1_REJECTED, EXIT_GATE2_REJECTED, EXIT_OK
from champion.forked import Forked
from champion.ingest.cache import Dataset
from champion.progress import data_progress, say
from champion.registry import storage, tracking
from champion.stages import card, promote, quantize
from champion.timings import stage
from champion.train import reuse


@dataclass
class Reused:
    """A training not repeated: the run recording the reuse, and the identical run it reuses."""

    run_id: str
    model_uri: str
    metrics: dict[str, float]
    reused_run_id: str


@dataclass
class RunOutcome:
    outputs: dict[str, str] = field(default_factory=dict)
    exit_code: int = EXIT_OK
    # An error after the float model shipped (in the int8 gate): raised by the caller once the outputs are out.
    error: Exception | None = None


def run(
    cfg: Config, output_dir: Path, quiet: bool = False, checkpoint: Path | None = None, force_train: bool = False
) -> RunOutcome:
    """Every stage; with `checkpoint`, the training stage only evaluates and logs those weights.

    With `force_train`, an identical earlier training is not reused: the model is trained again.
    """
    timings.reset()
    try:
        # The stages share each model they download from a tracking server (each still checks its hash).
        with storage.shared_downloads():
            return _run(cfg, output_dir, quiet, checkpoint, force_train)
    finally:
        timings.write_if_asked()


def _run(cfg: Config, output_dir: Path, quiet: bool, checkpoint: Path | None, force_train: bool) -> RunOutcome:
    out = RunOutcome()
    card.claim_dir(card.card_folder(output_dir, cfg.model.name))  # refused before, not after, training
    trained, data = None, None
    if not force_train:
        trained, data = _reuse_identical(cfg, checkpoint, quiet)
    if trained is None:
        trained = _import_training().train(cfg, quiet=quiet, checkpoint=checkpoint, data=data)
    if trained is None:  # a DDP worker process: rank 0 runs the gates and the rest
        return out
    out.outputs["RUN_ID"] = trained.run_id
    with stage("gate 1"):
        gate1 = promote.promote(trained.run_id, quiet=quiet)
    out.outputs["RESULT"] = gate1.result
    identical = f" (the candidate is identical to run {trained.reused_run_id})" if isinstance(trained, Reused) else ""
    say(f"{gate1.summary()}{identical}", quiet)
    if gate1.passed:
        with stage("import export"), _no_collections():
            from champion.stages import export, validate  # lazy: torch and onnxruntime, timed apart, only after a Gate 1 pass
        out.outputs["MODEL_VERSION"] = str(gate1.model_version)
        with stage("export"):
            exported = export.export(cfg.model.name, version=gate1.model_version, quiet=quiet)
        out.outputs["EXPORT_RUN_ID"] = exported.export_run_id
        with stage("gate 2"):
            gate2 = validate.validate(exported.export_run_id, quiet=quiet)
        out.outputs["GATE2_RESULT"] = gate2.result
        diff = gate2.report.get("max_abs_diff")
        detail = f"max |diff| {diff:.2e}" if diff is not None else gate2.report.get("failures", [{}])[0].get("check", "")
        say(f"Quality Gate 2 {gate2.result}: {detail}", quiet)
        if gate2.passed:
            out.outputs["ONNX_MODEL_VERSION"] = str(gate2.model_version)
            if "onnx_int8" in cfg.export.formats:  # its verdict is reported, never the run's exit code
                try:
                    out.outputs.update(_int8(exported.export_run_id, quiet))
                except Exception as exc:  # noqa: BLE001 - not swallowed: kept, and raised after the outputs and the card
                    # champion and deploy have moved already: what shipped is still printed, and the card written.
                    out.outputs["INT8_RESULT"] = "error"
                    out.error = exc
        else:  # RESULT stays Gate 1's verdict; GATE2_RESULT and the exit code tell the rest
            out.exit_code = EXIT_GATE2_REJECTED
    else:
        out.exit_code = EXIT_GATE1_REJECTED
    with stage("model card"):
        card_path = card.write_cards(trained.run_id, output_dir, cfg.model.name, champion=gate1.passed)
    out.outputs["MODEL_CARD"] = str(card_path)
    return out


def _import_training() -> ModuleType:
    """`champion.train.run`, imported (torch and Lightning: seconds, paid only when training) and
    timed as its own stage the first time; a first run imports it beside its data, not again here."""
    if "champion.train.run" not in sys.modules:
        with stage("import training"), _no_collections():
            import champion.train.run  # noqa: F401 - lazy: timed apart, only when training
    from champion.train import run

    return run


@contextlib.contextmanager
def _no_collections() -> Iterator[None]:
    """No garbage collection during the block (an import), and none of what it made afterwards.

    An import creates hundreds of thousands of objects that live as long as the process, and each
    collection during it walks all of them made so far again, to find no garbage: champion's and
    MLflow's imports with its SQLite store took 1.65 s with collections and 1.2 s without; torch,
    Lightning and torchmetrics (`champion.train.run`) 3.4 s and 2.5 s. When the block imported
    something, what is alive is then frozen (`gc.freeze`: exempt from every later collection) before
    collection is turned back on; otherwise the first allocation after it walked it all at once
    (0.3-0.4 s per import).
    """
    collecting, modules = gc.isenabled(), len(sys.modules)
    gc.disable()
    try:
        yield
    finally:
        if len(sys.modules) > modules:  # something was imported (not when a test process ran it before)
            gc.freeze()
        if collecting:
            gc.enable()


def _reuse_identical(cfg: Config, checkpoint: Path | None, quiet: bool) -> tuple["Reused | None", "Dataset | None"]:
    """The identical finished training recorded as this run's, or None; and the data, when it was prepared.

    Either way one line on stderr, even with --quiet: a run that skipped its training must say so,
    and one that trains says why it could not reuse (an evaluated `checkpoint` trains nothing: no line).
    """
    why_not = reuse.ineligible(cfg, checkpoint)
    if why_not is not None:
        if checkpoint is None:
            _not_reusing(why_not)
        return None, None
    uri = tracking.tracking_uri()
    new_store = tracking.new_local_store(uri)
    if new_store:
        tracking.announce(uri, quiet)  # named (as new) before the line that says why nothing is reused
        _not_reusing(f"no identical finished training in experiment {cfg.experiment!r}: the tracking store is new")
        if sys.platform == "linux" and threading.active_count() == 1 and "torch" not in sys.modules:
            return None, _prepare_beside_imports(cfg, quiet)
    with stage("ingest"), data_progress(quiet) as report:
        data = ingest.prepare(cfg.data, cfg.training.seed, report)
    if new_store:  # nothing in it to look up
        return None, data
    with stage("import mlflow"), _no_collections():
        import mlflow  # noqa: F401 - timed apart from the look-up it serves
    with stage("look up identical training"), _no_collections():  # MLflow imports its store's modules (SQLAlchemy) here
        git = tracking.git_tags()
        key = reuse.fingerprint(cfg, data.digest, git)
        tracking.setup_tracking(quiet)
        identical = reuse.find_identical(cfg.experiment, cfg.model.name, key) if key else None
    if identical is None:
        _not_reusing(reuse.unnamed_code(git) or f"no identical finished training in experiment {cfg.experiment!r}")
        return None, data
    with stage("record reuse"):
        run_id, metrics = reuse.record_reuse(identical, cfg)
    commit = git[names.GIT_COMMIT]
    code = f"commit {commit[:12]}" if commit != "unknown" else f"champion source {reuse.source_digest()[:12]}"
    print(
        f"identical training found: run {identical.run_id} (same config, data {data.digest}, {code}, "
        f"seed {cfg.training.seed}, deterministic); not training again, reusing it as "
        f"run {run_id}. Use --force-train to train anew.",
        file=sys.stderr,
        flush=True,
    )
    return Reused(run_id, identical.model_uri, metrics, identical.run_id), data


def _prepare_beside_imports(cfg: Config, quiet: bool) -> Dataset:
    """The data, prepared in a forked child while this process imports torch and Lightning.

    A new store holds no training to reuse, so this run trains and needs those imports (seconds)
    anyway. On a second core the child prepares the data and creates the store (MLflow's schema
    migrations: over a second). The child only builds: the entry is opened here afterwards, a cache
    hit, and if the child failed for any reason this process prepares the data itself and meets the
    error as a run without the child would. Forking needs Linux, a process with no other thread (a
    thread holding a lock at the fork would leave the child blocked on it) and torch not imported
    yet: the child may resize images with torch, and torch's OpenMP threads do not survive a fork
    (the child would wait at their barrier forever). `champion run` forks before importing torch; a
    Python process that used torch already (a notebook, the tests) prepares the data itself.
    """
    with stage("import mlflow"), _no_collections():
        import mlflow  # noqa: F401 - before the fork: the child needs it and need not import it again
    child = Forked(lambda: _build_data_and_store(cfg, quiet))
    try:
        _import_training()  # what training needs, while the child works
        with stage("wait for the data and the store"):
            child.join()
    finally:
        child.stop()  # only when this process failed before joining
    with stage("ingest"), data_progress(quiet) as report:
        return ingest.prepare(cfg.data, cfg.training.seed, report)


def _build_data_and_store(cfg: Config, quiet: bool) -> None:
    """In the child: the cache entry and the tracking store, built for the parent to open."""
    with stage("ingest"), data_progress(quiet) as report:
        ingest.prepare(cfg.data, cfg.training.seed, report, mapped=True)  # mapped: the images are not kept
    with stage("create the tracking store"), _no_collections():
        tracking.setup_tracking(quiet)
        client = tracking.client()
        client.search_experiments(max_results=1)  # the tracking store's tables
        client.search_registered_models(max_results=1)  # and the registry's


def _not_reusing(why: str) -> None:
    print(f"not reusing an earlier training: {why}; training.", file=sys.stderr, flush=True)


def _int8(export_run_id: str, quiet: bool) -> dict[str, str]:
    """The int8 gate (`champion.stages.quantize`) on a validated export: INT8_RESULT and what it registered.

    A rejection does not fail the run: the float model has shipped, and INT8_RESULT=failed says the
    int8 one did not.
    """
    result = quantize.gate(export_run_id, quiet=quiet)
    say(result.summary(), quiet)
    return result.outputs()
