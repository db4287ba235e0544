"""`champion evaluate`: the shipped model on a labelled set, against what its training recorded.

Labels come from class folders (`SOURCE/<class>/...`; a folder holding train/, val/ and test/ is
read at `split`) or from a configured `data.source` at `split`, prepared by `champion.ingest` with
the model's recorded preprocessing. The figures: accuracy, per-class precision, recall, F1 and
support, the confusion matrix; the recorded ones are the training run's, from its `evaluation.json`: the
test split's (`"test"`, with its confusion matrix) when it had one, else the validation split's.
The drop in accuracy is the headline.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from champion import metrics, names
from champion.deploy.model import ServedModel
from champion.errors import ConfigError
from champion.files import atomic_write, claim
from champion.inference import batches, sources
from champion.ingest.splits import SPLITS

REPORT_FILE = "report.md"
JSON_FILE = "evaluation.json"
PLOT_FILE = "confusion_matrix.png"


@dataclass
class Evaluation:
    model: str  # <name>-onnx
    version: str
    source: str
    split: str | None
    classes: list[str]  # the model's, in its order
    images: int  # labelled images read
    unreadable: list[str]  # "path (reason)"
    accuracy: float
    per_class: dict[str, dict[str, float]]  # class -> precision, recall, f1, support
    confusion_matrix: list[list[int]]
    recorded: dict[str, Any] = field(default_factory=dict)  # training's figures: accuracy, per_class, run_id

    @property
    def drop(self) -> float | None:
        """Recorded accuracy minus this one (positive: worse than at training)."""
        recorded = self.recorded.get("accuracy")
        return None if recorded is None else recorded - self.accuracy

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "accuracy_drop": self.drop}


def from_folder(model: ServedModel, source: str, split: str | None, batch_size: int, progress: Any = None) -> Evaluation:
    """Evaluate on class folders under `source` (local or s3://), at `split` when it has split folders."""
    root, chosen = _split_root(source, split)
    known = {name: i for i, name in enumerate(model.labels)}
    listed = list(_labelled(root, chosen))
    unknown = sorted({_class_of(image, chosen) for image in listed} - set(known))
    if unknown:
        raise ConfigError(
            f"{source}: classes {unknown} are not among the model's {len(known)} classes ({', '.join(model.labels)}); "
            "evaluate on folders named after the model's classes"
        )
    labels, predicted, unreadable = [], [], []
    for n, p in enumerate(batches.predict(model, listed, batch_size), 1):
        if p.probabilities is None:
            unreadable.append(f"{p.image.name} ({p.error})")
        else:
            labels.append(known[_class_of(p.image, chosen)])
            predicted.append(int(np.argmax(p.probabilities)))
        if progress:
            progress("evaluating", n, len(listed))
    return _evaluation(model, source, chosen, np.array(labels, np.int64), np.array(predicted, np.int64), unreadable)


def from_config(model: ServedModel, cfg: Any, split: str, batch_size: int, progress: Any = None) -> Evaluation:
    """Evaluate on the configured `data.source` at `split`, prepared with the model's preprocessing."""
    from champion import ingest  # lazy: preparing a data set loads the data stack

    pre = model.preprocessing
    if pre is None:
        raise ConfigError(f"{model.registry_name} v{model.version} does not take an image tensor")
    data_cfg = cfg.data.model_copy(update={"image_size": tuple(pre.image_size), "channels": pre.channels, "resize": pre.resize})
    data = ingest.prepare(data_cfg, cfg.training.seed, progress, splits=(split,))
    if not data.has(split):
        raise ConfigError(f"data.source {cfg.data.source!r} has no {split!r} split (it has {[s for s in SPLITS if data.has(s)]})")
    unknown = sorted(set(data.classes) - set(model.labels))
    if unknown:
        raise ConfigError(f"data.source {cfg.data.source!r}: classes {unknown} are not among the model's ({', '.join(model.labels)})")
    remap = np.array([model.labels.index(c) for c in data.classes], np.int64)
    x, y = data.split(split)
    predicted = np.empty(len(y), np.int64)
    name = model.inputs[0].name
    for start in range(0, len(y), batch_size):
        predicted[start : start + batch_size] = batches.probabilities_of(model.session, name, x[start : start + batch_size]).argmax(1)
    return _evaluation(model, str(cfg.data.source), split, remap[y], predicted, [])


def _evaluation(model: ServedModel, source: str, split: str | None, labels: np.ndarray, predicted: np.ndarray, unreadable: list[str]) -> Evaluation:
    if not len(labels):
        raise ConfigError(f"{source}: no readable labelled image to evaluate on" + (f" ({len(unreadable)} unreadable)" if unreadable else ""))
    k = len(model.labels)
    confusion = metrics.confusion_matrix(labels, predicted, k)
    prf = metrics.precision_recall_f1(confusion)
    per_class = {c: {m: float(prf[m][i]) for m in ("precision", "recall", "f1", "support")} for i, c in enumerate(model.labels)}
    return Evaluation(model.registry_name, model.version, source, split, list(model.labels), int(len(labels)), unreadable,
                      metrics.accuracy(labels, predicted), per_class, confusion.tolist())  # fmt: skip


def _split_root(source: str, split: str | None) -> tuple[str, str | None]:
    """The class folders' parent, and the split read (None: a folder of class folders only)."""
    if source.startswith("s3://"):
        return source, split
    root = Path(source).expanduser()
    if not root.is_dir():
        raise ConfigError(f"{source} is not a folder: evaluate reads class folders (SOURCE/<class>/<image>)")
    present = [s for s in SPLITS if (root / s).is_dir()]
    if not present:
        if split not in (None, "test"):
            raise ConfigError(f"--split {split}: {source} has no split folders (train/, val/, test/), only class folders")
        return source, None
    chosen = split or "test"
    if chosen not in present:
        raise ConfigError(f"{source} has no {chosen}/ folder (it has {', '.join(present)}); choose one with --split")
    return source, chosen


def _labelled(root: str, split: str | None) -> Iterator[sources.Image]:
    """Images inside class folders (a file directly under the root has no class and is not read)."""
    for image in sources.images(root):
        parts = image.rel.replace("\\", "/").split("/")
        if split is not None:
            if parts[0] != split:
                continue
            parts = parts[1:]
        if len(parts) >= 2:
            yield image


def _class_of(image: sources.Image, split: str | None) -> str:
    parts = image.rel.replace("\\", "/").split("/")
    return parts[1] if split is not None else parts[0]


def recorded(model: ServedModel) -> dict[str, Any]:
    """What training recorded for this version: the test split's accuracy and per-class figures (from
    its confusion matrix in `evaluation.json`), else the validation split's when there was no test split."""
    from champion.registry import tracking

    mv = tracking.model_version(model.registry_name, None, model.version, "")
    run_id = mv.tags.get(names.PARENT_RUN_ID)
    if not run_id:
        return {}
    run = tracking.get_run(run_id)
    logged = json.loads(tracking.read_artifact(run_id, names.EVALUATION_FILE)) if names.EVALUATION_FILE in tracking.list_artifacts(run_id) else {}
    figures = logged.get("test") or ({"split": "test", "accuracy": run.data.metrics["test_accuracy"]} if "test_accuracy" in run.data.metrics else logged)
    out: dict[str, Any] = {"run_id": run_id, "split": figures.get("split", "val"), "accuracy": figures.get("accuracy")}
    if figures.get("confusion_matrix") and logged.get("classes"):
        prf = metrics.precision_recall_f1(np.array(figures["confusion_matrix"]))
        out["per_class"] = {str(c): {k: float(prf[k][i]) for k in ("precision", "recall", "f1")} for i, c in enumerate(logged["classes"])}
    return out


def write(evaluation: Evaluation, folder: Path) -> Path:
    """The report (markdown), its JSON and the confusion matrix PNG in `folder`; returns the report's path.

    `folder` is claimed first (`files.claim`): a folder that is not champion's evaluation folder, and
    not empty, is refused (exit 2) before anything in it is replaced.
    """
    from champion.plots import confusion_matrix_png

    claim(folder, "evaluation")
    confusion_matrix_png(evaluation.classes, evaluation.confusion_matrix, f"Confusion matrix ({evaluation.split or 'all'})", folder / PLOT_FILE)
    atomic_write(folder / JSON_FILE, json.dumps(evaluation.to_dict(), indent=2) + "\n")
    atomic_write(folder / REPORT_FILE, markdown(evaluation))
    return folder / REPORT_FILE


def _figure(value: float | None) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def markdown(e: Evaluation) -> str:
    """The report, in the model card's style: the headline, the per-class table, the matrix."""
    recorded, per_recorded = e.recorded.get("accuracy"), e.recorded.get("per_class") or {}
    drop = e.drop
    headline = f"**Accuracy {_figure(e.accuracy)}**"
    if drop is not None:
        headline += f" against {_figure(recorded)} recorded at training ({e.recorded.get('split')} split): " + (
            f"a drop of {drop:.4f}" if drop > 0 else f"no drop ({-drop:+.4f})"
        )
    else:
        headline += " (training recorded no accuracy for this version)"
    lines = [
        f"# Evaluation: {e.model} v{e.version}",
        "",
        headline,
        "",
        f"- Data: `{e.source}`" + (f", split `{e.split}`" if e.split else ""),
        f"- Images: {e.images} read" + (f", {len(e.unreadable)} unreadable (not counted)" if e.unreadable else ""),
    ]
    if e.recorded.get("run_id"):
        lines.append(f"- Training run: `{e.recorded['run_id']}`")
    lines += ["", "## Per class", "", "| class | precision | recall | F1 | support | recorded precision | recorded recall | recorded F1 |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for c in e.classes:
        now, then = e.per_class[c], per_recorded.get(c, {})
        lines.append(f"| {c} | {_figure(now['precision'])} | {_figure(now['recall'])} | {_figure(now['f1'])} | {int(now['support'])} | "
                     f"{_figure(then.get('precision'))} | {_figure(then.get('recall'))} | {_figure(then.get('f1'))} |")  # fmt: skip
    lines += ["", "## Confusion matrix", "", f"![confusion matrix]({PLOT_FILE})", ""]
    if e.unreadable:
        lines += ["## Unreadable files", "", *[f"- {u}" for u in e.unreadable[:50]]]
        if len(e.unreadable) > 50:
            lines.append(f"- ... and {len(e.unreadable) - 50} more (all in {JSON_FILE})")
        lines.append("")
    return "\n".join(lines)
