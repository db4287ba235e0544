"""`champion predict` and `champion evaluate`: the shipped model over a folder of images, from the terminal."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Optional

import typer

from champion import names
from champion.cli.common import ConfigOpt, QuietOpt, SetOpt, _emit, _resolve_config, app, guarded
from champion.errors import EXIT_BELOW_FAIL_UNDER, EXIT_OK, EXIT_UNREADABLE
from champion.progress import console, data_progress, say

ModelNameOpt = typer.Option(None, "--model-name", help="Registered model, NAME or NAME-onnx (default: the registry's only -onnx model).")
AliasOpt = typer.Option(names.DEPLOY_ALIAS, "--alias", help="Alias of NAME-onnx to run.")
VersionOpt = typer.Option(None, "--version", help="Version of NAME-onnx to run (instead of --alias).")
ModelUriOpt = typer.Option(None, "--model-uri", help="models:/NAME-onnx@ALIAS or models:/NAME-onnx/VERSION (instead of the three above).")
BatchOpt = typer.Option(64, "--batch-size", help="Images per ONNX Runtime run.")


@app.command("predict")
@guarded
def predict_cmd(
    source: str = typer.Argument(..., help="An image file, a folder (recursive), a .txt file listing paths, or s3://bucket/prefix."),
    model_name: Optional[str] = ModelNameOpt,
    alias: str = AliasOpt,
    version: Optional[str] = VersionOpt,
    model_uri: Optional[str] = ModelUriOpt,
    output: str = typer.Option("-", "--output", "-o", help="File to write (- for stdout); the format follows its extension."),
    fmt: Optional[str] = typer.Option(None, "--format", help="csv, jsonl or parquet (default: from --output's extension, else csv)."),
    top_k: int = typer.Option(1, "--top-k", help="Labels per image, most probable first."),
    batch_size: int = BatchOpt,
    quiet: bool = QuietOpt,
) -> int:
    """Classify images with the shipped model: one row per image, top-k labels or why it could not be read.

    Exit 5 when any file could not be read (its row says why); docs/predict.md.
    """
    from champion.inference import predict
    from champion.inference.model import open_model

    model = open_model(model_name, alias, version, model_uri, quiet)
    say(f"model: {model.registry_name} v{model.version} ({len(model.labels)} classes)", quiet)
    try:
        with _ticker(quiet) as tick:
            summary = predict.run(model, source, output, fmt, top_k, batch_size, tick=tick)
    except BrokenPipeError:  # the reader stopped (`| head`): not an error, and nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit must not fail again
        return EXIT_OK
    values = {"IMAGES": str(summary.images), "UNREADABLE": str(summary.unreadable)}
    if output == "-":  # stdout holds the rows: the summary goes to stderr
        say(f"{summary.images} images, {summary.unreadable} unreadable, {summary.per_second:.0f} images/s", quiet)
    else:
        say(f"{summary.images} images in {summary.seconds:.1f} s ({summary.per_second:.0f} images/s)", quiet)
        _emit({"PREDICTIONS": output, **values}, None)
    return EXIT_UNREADABLE if summary.unreadable else EXIT_OK


@app.command("evaluate")
@guarded
def evaluate_cmd(
    source: Optional[str] = typer.Argument(None, help="Class folders (SOURCE/<class>/<image>; with train/ val/ test/ inside, --split picks one), local or s3://. Default: the configured data.source."),
    model_name: Optional[str] = ModelNameOpt,
    alias: str = AliasOpt,
    version: Optional[str] = VersionOpt,
    model_uri: Optional[str] = ModelUriOpt,
    split: Optional[str] = typer.Option(None, "--split", help="train, val or test (default: test, or every image of plain class folders)."),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[list[str]] = SetOpt,
    fail_under: Optional[float] = typer.Option(None, "--fail-under", help="Exit 6 when accuracy (a fraction) is below this."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Where the report goes (default: outputs/NAME/evaluations/vVERSION-TIME)."),
    as_json: bool = typer.Option(False, "--json", help="Print the evaluation as JSON on stdout instead of KEY=value lines."),
    batch_size: int = BatchOpt,
    quiet: bool = QuietOpt,
) -> int:
    """Evaluate the shipped model on labelled images: accuracy and its drop since training, per-class figures.

    Writes a report (markdown, JSON, confusion matrix PNG). Exit 6 under --fail-under, 5 when files
    could not be read, 2 for labels the model does not know; docs/predict.md.
    """
    from champion.errors import ConfigError
    from champion.inference import evaluation
    from champion.inference.model import open_model

    if fail_under is not None and not 0 <= fail_under <= 1:
        raise ConfigError(f"--fail-under {fail_under}: accuracy is a fraction in [0, 1] (e.g. 0.95), not a percentage")
    if split is not None and split not in ("train", "val", "test"):
        raise ConfigError(f"--split {split!r}: one of train, val, test")
    if source is not None and (config is not None or overrides):
        raise ConfigError("give SOURCE (class folders) or --config/--set (the configured data.source), not both")
    model = open_model(model_name, alias, version, model_uri, quiet)
    say(f"model: {model.registry_name} v{model.version} ({len(model.labels)} classes)", quiet)
    with data_progress(quiet) as progress:
        if source is not None:
            result = evaluation.from_folder(model, source, split, batch_size, progress)
        else:
            result = evaluation.from_config(model, _resolve_config(config, overrides, None, None, None), split or "test", batch_size, progress)
    result.recorded = evaluation.recorded(model)
    folder = output_dir or Path("outputs", model.name, "evaluations", f"v{model.version}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}")
    report = evaluation.write(result, folder)
    below = fail_under is not None and result.accuracy < fail_under
    drop = result.drop
    say(f"accuracy {result.accuracy:.4f} on {result.images} images"
        + (f"; recorded at training {result.recorded['accuracy']:.4f} on its {result.recorded['split']} split (drop {drop:+.4f})" if drop is not None else "")
        + (f"; below --fail-under {fail_under}" if below else ""), quiet)  # fmt: skip
    if as_json:
        print(json.dumps({**result.to_dict(), "report": str(report)}, indent=2))
    else:
        values = {"ACCURACY": f"{result.accuracy:.6f}", "EVALUATION_REPORT": str(report), "IMAGES": str(result.images),
                  "UNREADABLE": str(len(result.unreadable))}  # fmt: skip
        if drop is not None:
            values["ACCURACY_DROP"] = f"{drop:.6f}"
        _emit(values, None)
    if below:
        return EXIT_BELOW_FAIL_UNDER
    return EXIT_UNREADABLE if result.unreadable else EXIT_OK


@contextlib.contextmanager
def _ticker(quiet: bool) -> Iterator[Callable[[int], None] | None]:
    """A row counter with images/s on a terminal's stderr; nothing on a pipe or with --quiet."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    started = time.perf_counter()
    with console.status("predicting") as status:

        def tick(n: int) -> None:
            if n % 64 == 0:
                status.update(f"predicting: {n} images, {n / max(time.perf_counter() - started, 1e-9):.0f} images/s")

        yield tick
