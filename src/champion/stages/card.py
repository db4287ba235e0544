"""Model card of a training run: a markdown summary plus plots, logged back to the run.

The card is built only from what the run recorded in MLflow (params, tags, metrics,
`evaluation.json`, `gate_report.json` and the export run), so it can be regenerated at any time
and always says what the registry says, never what a local file claims.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from champion.registry import tracking
from champion.errors import ChampionError
from champion.files import atomic_write, claim
from champion import names

# matplotlib is imported inside the function that draws (pyplot only after `matplotlib.use("Agg")`):
# `champion run` imports this module at start-up, and only drawing the plots needs it (a reused
# training's card copies its identical run's plots instead).

CARD_ARTIFACT_PATH = names.MODEL_CARD_DIR
PLOTS = ("confusion_matrix", "per_class_accuracy", "training_loss", "training_accuracy")


def write_card(run_id: str, output_dir: str | Path) -> Path:
    """Build the model card of training run `run_id`, write it to `output_dir`, log it to the run.

    Args:
        run_id: The MLflow id of a completed training run.
        output_dir: Folder that receives `model_card.md` and `plots/*.png` (created if needed).

    Returns:
        The path of the markdown file.

    Raises:
        ChampionError: The run is unknown or is not a completed training run.
        RegistryError: MLflow could not be read or written.
    """
    run = tracking.get_run(run_id)
    evaluation, gate = _reports(run_id)
    history = {
        key: tracking.metric_history(run_id, key)
        for key in ("train_loss", "val_loss", "val_accuracy", "best_val_accuracy")
    }
    export_id = run.data.tags.get(names.EXPORT_RUN_ID)
    export_run = tracking.get_run(export_id) if export_id else None

    out = claim_dir(output_dir)
    (out / "plots").mkdir(exist_ok=True)
    if not _copy_reused_plots(run, out / "plots"):
        _plot(evaluation, history, out / "plots")
    card = out / "model_card.md"
    atomic_write(card, _markdown(run, evaluation, gate, history, export_run))

    with tracking.registry_errors(f"log the model card to run {run_id}"):
        c = tracking.client()  # the card and its plots, not the folder's ownership marker
        c.log_artifact(run_id, str(card), CARD_ARTIFACT_PATH)
        c.log_artifacts(run_id, str(out / "plots"), f"{CARD_ARTIFACT_PATH}/plots")
    return card


def card_folder(output_dir: str | Path, run_name: str) -> Path:
    """The champion's card: `output_dir/<name>/model_card`, moved only by a promotion.

    Training runs are named after `model.name`. A run name is registry data that anyone may edit:
    one that is not a plain folder name (a path, `..`) is refused, never followed out of `output_dir`.

    Raises:
        ChampionError: `run_name` is not a plain folder name.
    """
    if not run_name or run_name in (".", "..") or any(c in run_name for c in "/\\\0"):
        raise ChampionError(
            f"the run is named {run_name!r}, which is not a plain folder name: its card would not land under "
            f"{output_dir}. Nothing was written; rename the run (the MLflow UI, or MlflowClient().set_tag(RUN_ID, "
            "'mlflow.runName', NAME)) to its model.name and try again"
        )
    return Path(output_dir) / run_name / names.MODEL_CARD_DIR


def run_card_folder(output_dir: str | Path, run_name: str, run_id: str) -> Path:
    """Every run's own card, whatever the gates said: `output_dir/<name>/runs/<run id>`, never overwritten by another run's."""
    return card_folder(output_dir, run_name).parent / "runs" / run_id


def write_cards(run_id: str, output_dir: str | Path, run_name: str, champion: bool) -> Path:
    """Write the run's card into its own folder and, when the run holds @champion, copy it to the champion's.

    Returns:
        The champion's card when the run is the champion, else the run's own: what `MODEL_CARD` prints.
    """
    stable = card_folder(output_dir, run_name)  # refused before anything is written
    own = write_card(run_id, run_card_folder(output_dir, run_name, run_id))
    if not champion:
        return own
    out = claim_dir(stable)
    (out / "plots").mkdir(exist_ok=True)
    for plot in sorted((own.parent / "plots").glob("*.png")):
        atomic_write(out / "plots" / plot.name, plot.read_bytes())
    atomic_write(out / own.name, own.read_bytes())  # last: the card names the plots beside it
    return out / own.name


def write_run_card(run_id: str, output_dir: str | Path) -> Path:
    """Write the card of training run `run_id` (`write_cards`): its own folder, and the champion's when it is @champion.

    Returns:
        The path of the markdown file `MODEL_CARD` names.

    Raises:
        ChampionError: The run is unknown, is not a completed training run, or has a name that is no folder name.
        RegistryError: MLflow could not be read or written.
    """
    name = tracking.get_run(run_id).info.run_name
    card_folder(output_dir, name)  # a hostile name is refused before the registry is asked anything more
    champion = tracking.current_champion(name)
    return write_cards(run_id, output_dir, name, champion is not None and tracking.version_run_id(champion) == run_id)


def claim_dir(output_dir: str | Path) -> Path:
    """The card's folder, made champion's: the card is rewritten in place on every run, so only into a
    folder champion made (or an earlier card's). `champion run` claims it before training.

    Raises:
        ConfigError: the folder holds files champion did not write.
    """
    return claim(Path(output_dir), "model card", adopt=_holds_only_a_card)


def _holds_only_a_card(folder: Path) -> bool:
    """A card folder written before markers existed: model_card.md and plots/ of our plots, nothing else."""
    plots = folder / "plots"
    ours = {f"{p}.png" for p in PLOTS}
    return {p.name for p in folder.iterdir()} <= {"model_card.md", "plots"} and (
        not plots.is_dir() or {p.name for p in plots.iterdir()} <= ours
    )


def _reports(run_id: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """`evaluation.json` (required) and `gate_report.json` (None when the gate has not run)."""
    logged = {Path(p).name for p in tracking.list_artifacts(run_id)}
    if names.EVALUATION_FILE not in logged:
        raise ChampionError(
            f"run {run_id} has no evaluation.json: it is not a completed champion training run; "
            "pass the run id printed by `champion train`"
        )
    # Checking the listing (not catching download errors) keeps an outage from reading as "absent".
    wanted = [names.EVALUATION_FILE] + ([names.GATE1_REPORT] if names.GATE1_REPORT in logged else [])
    loaded = {name: json.loads(tracking.read_artifact(run_id, name)) for name in wanted}
    return loaded[names.EVALUATION_FILE], loaded.get(names.GATE1_REPORT)


def _copy_reused_plots(run: Any, folder: Path) -> bool:
    """Copy the plots of the training a reused run reuses; False (nothing copied) when there is none to copy.

    A reuse run holds copies of its identical run's evaluation and metric histories, and the two
    ran the same champion source (part of the training fingerprint): its plots are the same numbers
    drawn by the same code. Copying them spares a rerun matplotlib's import and four renders
    (about 0.7 s of the second identical `champion run`). An identical run without all of them (its
    card was never written) leaves the plots to be drawn.
    """
    source = run.data.tags.get(names.REUSED_RUN_ID)
    if not source:
        return False
    wanted = [f"{plot}.png" for plot in PLOTS]
    held = {Path(p).name for p in tracking.list_artifacts(source, f"{CARD_ARTIFACT_PATH}/plots")}
    if not set(wanted) <= held:
        return False
    for name in wanted:
        atomic_write(folder / name, tracking.read_artifact_bytes(source, f"{CARD_ARTIFACT_PATH}/plots/{name}"))
    return True


def _plot(evaluation: dict[str, Any], history: dict[str, list[tuple[int, float]]], folder: Path) -> None:
    import matplotlib

    # Agg renders to files only: the card is written on servers and in CI, without a display.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from champion.plots import confusion_matrix_png, save  # lazy: matplotlib comes with it

    classes = [str(c) for c in evaluation["classes"]]
    confusion_matrix_png(classes, evaluation["confusion_matrix"], f"Confusion matrix ({evaluation.get('split', 'val')})",
                         folder / "confusion_matrix.png")  # fmt: skip

    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(classes) + 2), 4))
    ax.bar(classes, [100 * (_class_accuracy(evaluation, c) or 0.0) for c in classes])
    ax.set(ylim=(0, 100), xlabel="class", ylabel="accuracy (%)", title="Per-class accuracy")
    save(fig, folder / "per_class_accuracy.png")

    for name, keys, ylabel in (("training_loss", ("train_loss", "val_loss"), "loss"),
                               ("training_accuracy", ("val_accuracy", "best_val_accuracy"), "accuracy")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for key in keys:
            if history[key]:
                steps, values = zip(*history[key])
                ax.plot(steps, values, marker="o", label=key)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.set(xlabel="epoch", ylabel=ylabel, title=name.replace("_", " ").capitalize())
        if ax.lines:
            ax.legend()
        save(fig, folder / f"{name}.png")


def _markdown(run: Any, evaluation: dict[str, Any], gate: dict[str, Any] | None,
              history: dict[str, list[tuple[int, float]]], export_run: Any) -> str:
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    name = run.info.run_name or tags.get("mlflow.runName", "unknown")
    classes = [str(c) for c in evaluation["classes"]]
    epochs = {step for key in ("train_loss", "val_loss", "val_accuracy") for step, _ in history[key]}
    best = metrics.get("best_val_accuracy", max((v for _, v in history["val_accuracy"]), default=None))
    passed = tags.get(names.GATE1_RESULT) == "passed"
    version = tags.get(names.GATE1_MODEL_VERSION) or (gate or {}).get("model_version")

    lines = [
        f"# Model card: {name}", "",
        "## Model details", "",
        f"- Name: {name}",
        f"- Architecture: {params.get('model.architecture', tags.get('architecture', 'unknown'))}",
        f"- Approach: {tags.get('approach', 'unknown')}",
        f"- Pretrained: {tags.get('pretrained', 'unknown')}",
        *([f"- Registered version: {version}"] if passed and version else []),
        f"- Training run: `{run.info.run_id}`",
        f"- Git: commit `{tags.get(names.GIT_COMMIT, 'unknown')}`, branch `{tags.get(names.GIT_BRANCH, 'unknown')}`, "
        f"dirty: {tags.get(names.GIT_DIRTY, 'unknown')}", "",
        "## Intended use", "",
        f"Image classification over the classes {', '.join(classes)}. Input: float32 NCHW tensors "
        "with values in [0, 1]; normalisation is done inside the model.", "",
        "## Data", "",
        f"- Source: {params.get(names.DATA_SOURCE, tags.get(names.DATA_SOURCE, 'unknown'))}",
        f"- Digest: `{tags.get(names.DATA_DIGEST, 'unknown')}`",
        f"- Split sizes: train {params.get('data.train_size', '?')}, validation {params.get('data.val_size', '?')}, "
        f"test {params.get('data.test_size', '?')}",
        f"- Classes ({len(classes)}): {', '.join(classes)}", "",
        "## Training", "",
        f"- Epochs run: {len(epochs)} (max {params.get('training.epochs', '?')})",
        f"- Optimizer: {params.get('training.optimizer', '?')}, learning rate {params.get('training.learning_rate', '?')}, "
        f"batch size {params.get('training.batch_size', '?')}", "",
        "## Metrics", "",
        f"- Best validation accuracy: {_pct(best)}",
        *([f"- Test accuracy: {_pct(metrics['test_accuracy'])}"] if "test_accuracy" in metrics else []),
        f"- Model size: {_num(metrics.get('model_size_mb'))} MB",
        f"- Inference time: {_num(metrics.get('inference_time_ms'))} ms per image", "",
        f"## Per-class accuracy ({evaluation.get('split', 'val')} split)", "",
        "| class | accuracy | support |", "| --- | ---: | ---: |",
        *(f"| {_cell(c)} | {_pct(_class_accuracy(evaluation, c, metrics))} | {sum(row)} |"
          for c, row in zip(classes, evaluation["confusion_matrix"])), "",
        "## Quality Gate 1", "",
    ]
    if gate is None:
        lines += ["Quality Gate 1: not run yet.", ""]
    else:
        lines += ["| criterion | required | actual | result |", "| --- | --- | --- | --- |",
                  *(f"| {_cell(k['name'])} | {_cell(k['required'])} | {_cell(k['actual'])} | "
                    f"{'pass' if k['passed'] else 'fail'} |" for k in gate.get("criteria", [])), "",
                  f"Result: **{gate.get('result', 'unknown')}** (decided by: {gate.get('decided_by', 'unknown')}).", ""]
        if gate.get("champion"):
            champ = gate["champion"]
            lines += [f"Compared with champion version {champ['version']} (run `{champ['run_id']}`): "
                      f"{gate.get('metric', 'metric')} {_num(champ['value'], 4)}.", ""]
    if export_run is not None:
        em = export_run.data.metrics
        gate2 = export_run.data.tags.get(names.GATE2_RESULT) or tags.get(names.GATE2_RESULT, "not run yet")
        lines += ["## Export and Quality Gate 2", "",
                  f"- Export run: `{export_run.info.run_id}`",
                  f"- ONNX file size: {_num(em.get('onnx_file_size_mb'))} MB",
                  f"- Max abs difference vs PyTorch: {_num(em.get('validation_max_abs_diff'), 6, 'g')}",
                  f"- Speed-up vs PyTorch: {_num(em.get('validation_speedup'))}x",
                  f"- Quality Gate 2: {gate2}", ""]
    lines += ["## Plots", "", *(f"![{p.replace('_', ' ')}](plots/{p}.png)" for p in PLOTS), ""]
    return "\n".join(lines)


def _class_accuracy(evaluation: dict[str, Any], label: str, metrics: dict[str, float] | None = None) -> float | None:
    value = evaluation.get("per_class_accuracy", {}).get(label)
    if value is not None:
        return value
    from champion.evaluate import class_metric_keys  # lazy: champion.evaluate imports torch; only evaluations without per-class accuracy need it

    return (metrics or {}).get(class_metric_keys(evaluation.get("classes", [label])).get(label, ""))


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _num(value: float | None, digits: int = 2, kind: str = "f") -> str:
    return "n/a" if value is None else f"{value:.{digits}{kind}}"


def _cell(text: Any) -> str:
    # A '|' inside a value would split the markdown table cell.
    return str(text).replace("|", "\\|")
