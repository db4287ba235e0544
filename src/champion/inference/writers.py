"""Prediction rows, streamed as they come: CSV (the default), JSONL or Parquet.

Every format has the same columns: `path`, then `label_1`, `probability_1` ... `label_k`,
`probability_k` (best first), then `error` (empty when the image was read). A file is written under a
temporary name beside it and renamed when the last row is in, so an interrupted run never leaves a
partial file under the name asked for; `-` streams to stdout, row by row.
"""

from __future__ import annotations

import contextlib
import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np

from champion.errors import ConfigError
from champion.files import replacing

FORMATS = ("csv", "jsonl", "parquet")
_BY_SUFFIX = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
PARQUET_ROW_GROUP = 4096  # rows held before a Parquet row group is written: bounded memory


def columns(top_k: int) -> list[str]:
    return ["path", *[c for i in range(1, top_k + 1) for c in (f"label_{i}", f"probability_{i}")], "error"]


def row(path: str, labels: list[str], probabilities: np.ndarray | None, ranking: np.ndarray | None, error: str, top_k: int) -> dict[str, Any]:
    """One output row: the top-k labels by probability (`ranking`: class indices, most probable first), or the error."""
    out: dict[str, Any] = {"path": path}
    order = ranking[:top_k] if ranking is not None else []
    for i in range(top_k):
        hit = i < len(order)
        out[f"label_{i + 1}"] = labels[order[i]] if hit else None
        out[f"probability_{i + 1}"] = probabilities[order[i]] if hit else None  # type: ignore[index]
    out["error"] = error or None
    return out


class Writer(Protocol):
    def write(self, row: dict[str, Any]) -> None: ...

    def flush(self) -> None:
        """Hand what was written to the reader (a pipe's reader sees rows batch by batch)."""


def output_format(output: str, fmt: str | None) -> str:
    """`--format`, else the output file's extension, else CSV."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ConfigError(f"--format {fmt!r}: one of {', '.join(FORMATS)}")
        return fmt
    return _BY_SUFFIX.get(Path(output).suffix.lower(), "csv") if output != "-" else "csv"


@contextlib.contextmanager
def open_writer(output: str, fmt: str, top_k: int) -> Iterator[Writer]:
    """A writer for `output` (a path, or `-` for stdout) in `fmt`; the file appears whole on a clean exit."""
    names = columns(top_k)
    if output == "-":
        if fmt == "parquet":
            raise ConfigError("Parquet is binary: write it to a file with --output FILE.parquet")
        yield _text_writer(sys.stdout, fmt, names)
        sys.stdout.flush()
        return
    path = Path(output).expanduser()
    if path.is_dir():
        raise ConfigError(f"--output {output} is a folder: name a file, e.g. {path / ('predictions.' + fmt)}")
    with replacing(path) as tmp:
        if fmt == "parquet":
            with _parquet_writer(tmp, names) as writer:
                yield writer
        else:
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                yield _text_writer(f, fmt, names)


def _text_writer(stream: IO[str], fmt: str, names: list[str]) -> Writer:
    if fmt == "jsonl":
        return _JsonLines(stream)
    return _Csv(stream, names)


class _Csv:
    def __init__(self, stream: IO[str], names: list[str]) -> None:
        self.stream = stream
        self.out = csv.writer(stream)
        self.out.writerow(names)

    def write(self, row: dict[str, Any]) -> None:
        self.out.writerow([_text(v) for v in row.values()])

    def flush(self) -> None:
        self.stream.flush()


class _JsonLines:
    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, row: dict[str, Any]) -> None:
        plain = {k: float(v) if isinstance(v, np.floating) else v for k, v in row.items()}
        self.stream.write(json.dumps(plain, ensure_ascii=False) + "\n")

    def flush(self) -> None:
        self.stream.flush()


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, np.floating):
        return np.format_float_positional(value, unique=True, trim="-")  # the shortest text that reads back the same float32
    return str(value)


@contextlib.contextmanager
def _parquet_writer(path: Path, names: list[str]) -> Iterator[Writer]:
    import pyarrow as pa  # lazy: only Parquet output needs it
    import pyarrow.parquet as pq

    schema = pa.schema([(n, pa.float32() if n.startswith("probability_") else pa.string()) for n in names])
    buffered: list[dict[str, Any]] = []
    with pq.ParquetWriter(str(path), schema) as out:

        class _Parquet:
            def write(self, row: dict[str, Any]) -> None:
                buffered.append({k: float(v) if isinstance(v, np.floating) else v for k, v in row.items()})
                if len(buffered) >= PARQUET_ROW_GROUP:
                    write_group()

            def flush(self) -> None:
                pass  # a row group is written whole, every PARQUET_ROW_GROUP rows

        def write_group() -> None:
            out.write_table(pa.Table.from_pylist(buffered, schema=schema))
            buffered.clear()

        yield _Parquet()
        if buffered:
            write_group()
