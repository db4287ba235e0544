"""`champion data`: prepare, inspect and clear the data cache (champion.ingest)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from champion.cli.common import ConfigOpt, OutputFilesOpt, QuietOpt, SetOpt, _config_epilog, _emit, _resolve_config, app, guarded
from champion.errors import ChampionError, ConfigError
from champion.progress import data_progress

data_app = typer.Typer(help="Prepare, inspect and clear the data cache.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("prepare", epilog=_config_epilog())
@guarded
def data_prepare(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    output_files: Optional[Path] = OutputFilesOpt,
    quiet: bool = QuietOpt,
) -> int:
    """Ingest data.source into the cache (a no-op when the entry exists); prints DATA_DIGEST and DATA_PATH."""
    from champion import ingest  # numpy and PIL: only once a command reads data

    cfg = _resolve_config(config, set_, None, None, None)
    with data_progress(quiet) as report:
        data = ingest.prepare(cfg.data, cfg.training.seed, report, mapped=True)  # only the entry is wanted: memory stays flat
    counts = {f"{k.upper()}_SIZE": str(len(v)) for k, v in data.splits.items()}
    _emit({"DATA_DIGEST": data.digest, "DATA_PATH": str(data.path), **counts, "SKIPPED": str(len(data.manifest["skipped"]))}, output_files)
    return 0


def _entry_row(e: dict[str, Any]) -> tuple[str, ...]:
    """One cache entry as a row of `data inspect`'s table (a long class list shown as its count)."""
    c = e["counts"]
    classes = ", ".join(e["classes"]) if len(e["classes"]) <= 12 else f"{len(e['classes'])} classes"
    return (e["digest"], e["source"], classes, "x".join(map(str, e["image_shape"])),
            str(c["train"]), str(c["val"]), str(c["test"]), str(len(e["skipped"])))  # fmt: skip


@data_app.command("inspect")
@guarded
def data_inspect(
    digest: Optional[str] = typer.Argument(None, help="Entry to show in detail (default: list all)."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
) -> int:
    """List the cache entries (digest, source, classes, split sizes), or show one."""
    from champion import ingest  # numpy and PIL: only once a command reads data

    cfg = _resolve_config(config, set_, None, None, None)
    root = ingest.cache_root(cfg.data)
    entries = [e for e in ingest.list_entries(root) if digest in (None, e["digest"])]
    if digest and not entries:
        raise ChampionError(f"no cache entry {digest!r} under {root}")
    table = Table(title=f"champion data cache: {root}")
    table.add_column("digest", no_wrap=True, min_width=16)
    for col in ("source", "classes", "image", "train", "val", "test", "skipped"):
        table.add_column(col)
    for e in entries:
        table.add_row(*_entry_row(e))
    Console().print(table)
    if digest:
        for line in entries[0]["skipped"]:
            print(f"skipped: {line}")
    return 0


@data_app.command("clear")
@guarded
def data_clear(
    digest: Optional[str] = typer.Argument(None, help="Entry to remove (default: everything champion wrote in the cache)."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    yes: bool = typer.Option(False, "--yes", "-y", help="Clear everything without asking (needed when not on a terminal)."),
) -> int:
    """Remove one cache entry, or everything champion wrote in the cache (entries, downloads, S3 copies).

    Only a folder champion marked as its cache (or an older cache it recognises) is cleared, and only
    what champion wrote there: other files in it are never touched.
    """
    from champion import ingest  # numpy and PIL: only once a command reads data

    def confirm(items: list[str]) -> bool:
        if yes:
            return True
        if not sys.stdin.isatty():
            raise ConfigError(f"clearing the whole cache {root} needs confirmation: pass --yes (nothing was removed)")
        shown = ", ".join(items[:10]) + (f" and {len(items) - 10} more" if len(items) > 10 else "")
        return typer.confirm(f"Remove {len(items)} item(s) from {root}: {shown}?", default=False, err=True)

    cfg = _resolve_config(config, set_, None, None, None)
    root = ingest.cache_root(cfg.data)
    removed = ingest.clear(root, digest, confirm=None if digest else confirm)
    _emit({"REMOVED": ",".join(removed) or "nothing"}, None)
    return 0
