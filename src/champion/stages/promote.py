"""Quality Gate 1: promote a training run only when it beats the current champion.

Rules (PRODUCT.md): the candidate's metric must reach `threshold`; when a champion exists it must
also beat it by `min_improvement`, compared on the same evaluation data (the champion is
re-evaluated on the candidate's validation split when the data digests differ); every configured
release criterion must hold. On pass the run's model is registered and the `champion` alias moves
(the old champion keeps the `previous_champion` alias, for rollback), each move an event in the
registry's history (`champion.registry.history`); on fail the registry is not touched. Either way `gate_report.json` is logged to the run and says which criterion decided.
Concurrent promotions of one model are serialised by its lease (`champion.registry.lease`, see `promote`).

The bar (threshold, min_improvement, release criteria) is the policy stored on the registered
model (`champion.registry.policy`), not the candidate's own config: the first promotion that passes stores
the candidate's criteria as that policy, and only `champion models policy --set` changes it.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from champion import ingest, names
from champion.config import Config, PromotionConfig
from champion.errors import ChampionError, RegistryError
from champion.progress import data_progress, say
from champion.registry import history, policy, release, storage, tracking
from champion.registry import lease as leases
from champion.registry.tracking import current_champion

# MLflow is imported inside `promote`, and champion.evaluate (torch) inside the functions that need it:
# `champion run` imports this module at start-up, and torch is needed only to re-evaluate a champion
# on changed data or to check a min_per_class_accuracy bar.

ALL_MET = "all criteria met"


@dataclass
class Criterion:
    name: str
    required: str
    actual: str
    passed: bool


@dataclass
class Champion:
    version: str
    run_id: str
    value: float
    evaluated_on: str


@dataclass
class GateResult:
    passed: bool
    decided_by: str
    metric: str
    candidate: dict[str, Any]
    champion: Champion | None
    criteria: list[Criterion] = field(default_factory=list)
    model_version: str | None = None
    policy: dict[str, Any] | None = None
    rounds: int = 1  # judgements made: more than one when another promotion moved the champion meanwhile
    bar: PromotionConfig | None = None  # the criteria it was judged by (None: an earlier promote decided)

    @property
    def result(self) -> str:
        return "passed" if self.passed else "failed"

    def summary(self) -> str:
        """The console line: the verdict and the numbers it was decided on, as the model card shows them.

        E.g. `Quality Gate 1 failed: improvement_over_champion. best_val_accuracy: candidate 0.9500
        (threshold 0.9000); champion v1 0.9480, re-evaluated on the validation split of data 1a2b;
        gain +0.0020, required >= +0.0050`.
        """
        line = f"Quality Gate 1 {self.result}: {self.decided_by}"
        value = self.candidate.get("value")
        if self.bar is None or value is None:
            return line
        parts = [f"candidate {value:.4f} (threshold {self.bar.threshold:.4f})"]
        if self.champion is None:
            parts.append("no champion yet")
        else:
            c = self.champion
            parts += [f"champion v{c.version} {c.value:.4f}, {c.evaluated_on}",
                      f"gain {value - c.value:+.4f}, required >= {self.bar.min_improvement:+.4f}"]  # fmt: skip
        decisive = next((k for k in self.criteria if not k.passed), None)
        if decisive is not None and decisive.name not in ("threshold", "improvement_over_champion"):
            parts.append(f"{decisive.name} {decisive.actual}, required {decisive.required}")
        return f"{line}. {self.metric}: {'; '.join(parts)}"

    def report(self) -> dict[str, Any]:
        return {
            "gate": "quality_gate_1",
            "result": self.result,
            "decided_by": self.decided_by,
            "metric": self.metric,
            "candidate": self.candidate,
            "champion": asdict(self.champion) if self.champion else None,
            "criteria": [asdict(c) for c in self.criteria],
            "model_version": self.model_version,
            "policy": self.policy,
            "rounds": self.rounds,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


def evaluate_criteria(
    p: PromotionConfig, metrics: dict[str, float], champion: Champion | None, class_names: dict[str, str] | None = None
) -> list[Criterion]:
    """Every rule of the gate, in the order they are reported. Pure: unit-testable without MLflow.

    Args:
        p: the bar, i.e. the registered model's stored policy (the candidate's only at the first promotion).
        metrics: the candidate run's metrics.
        champion: the champion's score on the candidate's evaluation data, or None when there is none.
        class_names: per-class metric key -> class name, for names that MLflow keys cannot hold as they are.
    """
    value = _required_metric(metrics, p.metric)
    rows = [Criterion("threshold", f">= {p.threshold:.4f}", f"{value:.4f}", value >= p.threshold)]
    if champion is not None:
        gain = value - champion.value
        # A tiny epsilon keeps a gain of exactly min_improvement from failing on float rounding.
        rows.append(Criterion(
            "improvement_over_champion", f">= {p.min_improvement:.4f} over v{champion.version} ({champion.value:.4f})",
            f"{gain:+.4f}", gain >= p.min_improvement - 1e-12,
        ))  # fmt: skip
    if p.min_per_class_accuracy is not None:
        from champion.evaluate import CLASS_METRIC_PREFIX  # lazy: champion.evaluate imports torch

        labels = class_names or {}
        per_class = {labels.get(k, k.removeprefix(CLASS_METRIC_PREFIX)): v for k, v in metrics.items() if k.startswith(CLASS_METRIC_PREFIX)}
        if not per_class:
            raise ChampionError("min_per_class_accuracy is set but the run logged no val_accuracy_class_* metrics")
        worst = min(per_class, key=per_class.get)
        rows.append(Criterion(
            "min_per_class_accuracy", f">= {p.min_per_class_accuracy:.4f}", f"{per_class[worst]:.4f} (class {worst})",
            per_class[worst] >= p.min_per_class_accuracy,
        ))  # fmt: skip
    if p.max_model_size_mb is not None:
        size = _required_metric(metrics, "model_size_mb")
        rows.append(Criterion("max_model_size_mb", f"<= {p.max_model_size_mb:g}", f"{size:.3f}", size <= p.max_model_size_mb))
    if p.max_inference_time_ms is not None:
        ms = _required_metric(metrics, "inference_time_ms")
        rows.append(Criterion("max_inference_time_ms", f"<= {p.max_inference_time_ms:g}", f"{ms:.3f}", ms <= p.max_inference_time_ms))
    return rows


def _required_metric(metrics: dict[str, float], key: str) -> float:
    if key not in metrics:
        raise ChampionError(f"the run has no metric {key!r}; is it a finished champion training run?")
    return metrics[key]


# Rounds judged without the lease before the judging itself runs under it. A round is lost only when
# another promotion moved the champion meanwhile; a round under the lease cannot be overtaken.
OPTIMISTIC_ROUNDS = 2


@dataclass
class _Judged:
    result: GateResult
    champion_version: str | None  # the @champion the candidate was compared against
    stored: policy.Policy | None  # the bar it was judged by (None: the first promotion, by its own)
    asked: policy.Policy
    already: bool = False  # the run already is the champion: nothing to register


def promote(run_id: str, quiet: bool = False) -> GateResult:
    """Run Quality Gate 1 on training run `run_id`; register and move `champion` when it passes.

    Concurrent promotions of one model are serialised by its lease (`champion.registry.lease`): the candidate
    is judged without it; then, holding it, the champion and the stored policy are checked to be
    the ones it was judged by before anything is registered. When another promotion moved the
    champion meanwhile, the candidate is judged again against the new one (and may then rightly be
    rejected); after OPTIMISTIC_ROUNDS such rounds it is judged under the lease.

    Raises:
        ChampionError: the run does not exist or is not a finished training run.
        RegistryError: the registry could not be reached (never read as "no champion").
    """
    import mlflow

    tracking.setup_tracking(quiet)
    run = tracking.get_run(run_id)
    cfg = tracking.load_run_config(run_id)
    name = cfg.model.name
    purpose = f"gate1 run {run_id}"
    content: dict[str, str] = {}  # the model's hash and size tags, taken once, outside the lease
    for attempt in range(1, OPTIMISTIC_ROUNDS + 1):
        judged = _judge(run, cfg, quiet, attempt)
        if judged.already or not judged.result.passed:
            break
        # Downloading and hashing the model can take seconds: never while other promotions wait.
        content = content or _content_tags(run)
        with leases.hold(name, purpose) as held:
            if _unchanged(name, judged):
                _commit(name, run, judged, held, content)
                break
        say(f"Quality Gate 1: the champion of {name!r} changed while run {run_id} was judged; judging it again", quiet)
    else:
        with leases.hold(name, purpose) as held:
            judged = _judge(run, cfg, quiet, OPTIMISTIC_ROUNDS + 1)
            if judged.result.passed and not judged.already:
                _commit(name, run, judged, held, content or _content_tags(run))
    result = judged.result
    if judged.already:
        return result
    with tracking.registry_errors(f"log gate_report.json to run {run_id}"):
        mlflow.MlflowClient().log_dict(run_id, result.report(), names.GATE1_REPORT)
    tags = {names.GATE1_RESULT: result.result, names.GATE1_DECIDED_BY: result.decided_by}
    if result.model_version:
        tags[names.GATE1_MODEL_VERSION] = result.model_version
    tracking.set_tags(run_id, tags)
    return result


def _judge(run, cfg: Config, quiet: bool, attempt: int) -> _Judged:
    """Judge the candidate against the current champion, by the stored policy; the registry is not touched."""
    run_id = run.info.run_id
    name = cfg.model.name
    version = current_champion(name)
    stored = policy.effective(name)
    asked = policy.Policy.from_config(cfg)
    bar = (stored or asked).promotion_criteria
    metric = bar.metric
    candidate_value = _required_metric(run.data.metrics, metric)
    if not run.data.tags.get(names.MODEL_URI):
        raise ChampionError(f"run {run_id} has no logged model (tag model_uri); it did not finish training")

    if version is not None and tracking.version_run_id(version) == run_id:
        # Already decided and registered (an orchestrator retrying the step): answer, change nothing.
        return _Judged(_already_champion(run, version, metric, candidate_value), str(version.version), stored, asked, already=True)
    champion = _champion_score(version, run, cfg, metric, quiet) if version is not None else None
    labels = _class_names(run_id) if bar.min_per_class_accuracy is not None else None
    criteria = evaluate_criteria(bar, run.data.metrics, champion, labels)
    failed = [c for c in criteria if not c.passed]
    result = GateResult(
        passed=not failed,
        decided_by=failed[0].name if failed else ALL_MET,
        metric=metric,
        candidate={"run_id": run_id, "value": candidate_value, "data_digest": run.data.tags.get(names.DATA_DIGEST)},
        champion=champion,
        criteria=criteria,
        policy=policy.report(stored, asked),
        rounds=attempt,
        bar=bar,
    )
    return _Judged(result, None if version is None else str(version.version), stored, asked)


def _unchanged(name: str, judged: _Judged) -> bool:
    """Under the lease: are @champion and the stored policy still the ones the candidate was judged by?"""
    model = tracking.registered_model(name, f"look up the champion of {name!r}")
    text = None if model is None else model.tags.get(policy.POLICY_TAG)
    now = None if text is None else policy.parse(text, name)
    return tracking.champion_number(model) == judged.champion_version and now == judged.stored


def _content_tags(run) -> dict[str, str]:
    """The hash and size of the candidate's logged model (`storage.content_tags`): what every consumer checks."""
    with tempfile.TemporaryDirectory(prefix="champion-gate-") as scratch:
        return storage.content_tags(storage.model_dir(run.data.tags[names.MODEL_URI], Path(scratch)))


def _commit(name: str, run, judged: _Judged, held: leases.Lease, content: dict[str, str]) -> None:
    """Under the lease: register the candidate that passed, move the aliases, store the first policy."""
    judged.result.model_version = _register(name, run.data.tags[names.MODEL_URI], run, judged.result, held, content)
    if judged.stored is None:
        # The first promotion: from now on this is the model's bar. Stored after the champion
        # exists, so that were this to fail, the next gate adopts the same bar from the champion.
        policy.store(name, judged.asked, reason=f"first promotion (run {run.info.run_id})")


def _class_names(run_id: str) -> dict[str, str]:
    """Per-class metric key -> class name, from the mapping the run logged (runs before it: keys are names)."""
    from champion.evaluate import CLASS_METRIC_KEYS_ARTIFACT  # lazy: champion.evaluate imports torch

    with tracking.registry_errors(f"list the artefacts of run {run_id}"):
        logged = {a.path for a in tracking.client().list_artifacts(run_id)}
    if CLASS_METRIC_KEYS_ARTIFACT not in logged:
        return {}
    return {key: name for name, key in json.loads(tracking.read_artifact(run_id, CLASS_METRIC_KEYS_ARTIFACT)).items()}


def _already_champion(run, version, metric: str, value: float) -> GateResult:
    with tracking.registry_errors(f"list the artefacts of run {run.info.run_id}"):
        artifacts = {a.path for a in tracking.client().list_artifacts(run.info.run_id)}
    criteria = []
    if names.GATE1_REPORT in artifacts:
        report = json.loads(tracking.read_artifact(run.info.run_id, names.GATE1_REPORT))
        criteria = [Criterion(**c) for c in report.get("criteria", [])]
    return GateResult(
        passed=True, decided_by="already champion (an earlier promote of this run)", metric=metric,
        candidate={"run_id": run.info.run_id, "value": value}, champion=None, criteria=criteria,
        model_version=str(version.version),
    )  # fmt: skip


def _champion_score(version, run, cfg: Config, metric: str, quiet: bool) -> Champion:
    """The champion's metric on the candidate's evaluation data."""
    digest = run.data.tags.get(names.DATA_DIGEST)
    champion_run_id = tracking.version_run_id(version)
    if version.tags.get(names.DATA_DIGEST) == digest:
        champion_run = tracking.get_run(champion_run_id)
        if metric not in champion_run.data.metrics:
            raise ChampionError(f"champion v{version.version} (run {champion_run_id}) has no metric {metric!r}")
        return Champion(version.version, champion_run_id, champion_run.data.metrics[metric], f"logged {metric} (same data digest)")
    score = _reevaluate(version, cfg, digest, quiet)
    return Champion(version.version, champion_run_id, score, f"re-evaluated on the validation split of data {digest}")


def _reevaluate(version, cfg: Config, digest: str | None, quiet: bool) -> float:
    """Accuracy of the champion on the candidate's validation split (the data changed since it won)."""
    from champion import evaluate  # lazy: torch

    with data_progress(quiet) as report:
        # Only the validation split is read (or decoded, in a fresh container): the rest is not compared on.
        data = ingest.prepare(cfg.data, cfg.training.seed, report, splits=("val",))
    if data.digest != digest:
        # The candidate's metric was measured on other data than what the source holds now.
        raise ChampionError(
            f"the data at {cfg.data.source} changed since the candidate trained (digest {data.digest}, the run "
            f"recorded {digest}): the champion cannot be re-evaluated on the candidate's validation split. "
            "Train a new candidate on the current data."
        )
    with tempfile.TemporaryDirectory(prefix="champion-gate-") as scratch:
        # In place from a local store, hash-checked; never through models:/ (it writes into the model's folder).
        model, pre = storage.load_pytorch(version, Path(scratch))
    classes, shape = list(pre["classes"]), [pre["channels"], *pre["image_size"]]
    if shape != list(data.images.shape[1:]):
        raise ChampionError(
            f"champion v{version.version} takes {'x'.join(map(str, shape))} images but the candidate's data is "
            f"{'x'.join(map(str, data.images.shape[1:]))}: the two cannot be compared on the same data. "
            "Use a new model.name for a new input shape."
        )
    if classes != data.classes:
        raise ChampionError(
            f"champion v{version.version} was trained on classes {classes} but the candidate's data has "
            f"{data.classes}: the two cannot be compared. Use a new model.name for a new label set."
        )
    x_val, y_val = data.split("val")
    return evaluate.accuracy(y_val, evaluate.predict_logits(model, x_val).argmax(1))


def _register(name: str, model_uri: str, run, result: GateResult, held: leases.Lease, content: dict[str, str]) -> str:
    """Register the candidate (with its `content` tags) and move the aliases (one event each), under `held`.

    The version `champion` leaves is the one `move_alias` reads right before the move; under the
    lease it is the one the candidate was judged against, so the history, `previous_champion` and
    the gate report agree.
    """
    run_id = run.info.run_id
    tags = {
        names.RUN_ID: run_id,
        names.DATA_DIGEST: run.data.tags.get(names.DATA_DIGEST, ""),
        names.GATE1_RESULT: "passed",
        names.GATE1_METRIC: result.metric,
        names.GATE1_VALUE: f"{result.candidate['value']:.6f}",
        **content,
    }
    passed = release.Release(
        name, name, model_uri, run_id, tags, tracking.CHAMPION_ALIAS, history.GATE1_PASSED, (run_id, names.GATE1_REPORT), {"run_id": run_id}
    )
    version = release.register(passed)
    # champion first: were a later call to fail, @champion is already the version that passed.
    try:
        moved = release.move(passed, version, held)
    except RegistryError as exc:
        _withdraw_if_refused(name, version, exc)
        raise
    with tracking.registry_errors(f"tag {name!r} v{version}"):
        tracking.client().set_model_version_tag(name, version, names.GATE1_PREVIOUS_CHAMPION, moved.from_version or "none")
    if moved.from_version is not None and moved.from_version != version:
        release.move(passed, moved.from_version, held, alias=tracking.PREVIOUS_ALIAS)
    return version


def _withdraw_if_refused(name: str, version: str, exc: RegistryError) -> None:
    """After the server refused the credentials @champion's move to `version` needed (a gateway may
    let a user register but not promote): delete that version again, so that nothing is registered.

    Raises:
        RegistryError: the refusal, saying that the version was withdrawn (or could not be: then
            which one is left). Returns when `exc` is no refusal, or the alias did move (the event
            after it was refused): the caller re-raises `exc`.
    """
    from champion.registry import auth  # lazy: it subclasses an MLflow class (MLflow loads with it)

    if auth.refusal(exc) is None:
        return
    model = tracking.registered_model(name, f"look up {name!r} after the refusal")
    if tracking.champion_number(model) == version:
        return
    try:
        with tracking.registry_errors(f"delete {name!r} v{version}"):
            tracking.client().delete_model_version(name, version)
    except RegistryError as undo:
        raise RegistryError(
            f"{exc} v{version} of {name!r} was registered before the refusal and could not be deleted ({undo}); "
            "ask the server's admin to delete it."
        ) from exc
    raise RegistryError(f"{exc} v{version} of {name!r} was registered before the refusal and has been deleted: nothing is registered.") from exc
