"""Content hashes of exported ONNX models, which may be one file or a file plus external data.

The hash recorded at export and checked by Quality Gate 2 covers every file the model is made
of: the graph file (`model.onnx`) and each external-data file its tensors point to. It is one
sha256 over the sorted relative paths, each followed by its size and its bytes, so renaming,
truncating, swapping or editing any of those files changes it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator

from champion.errors import ConfigError, IntegrityError

# onnx (and protobuf, which comes with it) is imported inside `model_files`: `champion --help` and
# `champion serve` import this module, and only hashing an exported model needs it.

# Scheme name recorded next to the hash, so a later scheme can tell the two apart.
SCHEME = "sha256-tree-v1"
EXTERNAL_DATA_ENV = "CHAMPION_ONNX_EXTERNAL_DATA_BYTES"
# Protobuf cannot serialise a message past 2 GiB; the graph, names and attributes take room too,
# so parameters above 2 GiB - 128 MiB already go to external data.
DEFAULT_EXTERNAL_DATA_BYTES = 2 * 1024**3 - 128 * 1024**2
_CHUNK = 16 * 1024**2


def external_data_threshold() -> int:
    """Parameter bytes from which ONNX tensors go to an external-data file (env override, for tests and tuning)."""
    raw = os.environ.get(EXTERNAL_DATA_ENV)
    if raw is None or raw == "":
        return DEFAULT_EXTERNAL_DATA_BYTES
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{EXTERNAL_DATA_ENV}={raw!r}: expected a whole number of bytes") from None
    if value < 0:
        raise ConfigError(f"{EXTERNAL_DATA_ENV}={raw!r}: must be >= 0")
    return value


def _tensors(graph) -> Iterator:
    """Every tensor of an ONNX graph, its sub-graphs included (where external data can hide)."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def model_files(onnx_file: Path) -> list[str]:
    """The graph file and its external-data files, as paths relative to the graph file's folder."""
    import onnx
    from google.protobuf.message import DecodeError  # protobuf: onnx's own dependency, imported with it
    from onnx import TensorProto

    files = {onnx_file.name}
    try:
        proto = onnx.load(str(onnx_file), load_external_data=False)
    except DecodeError:  # an unparsable graph still has bytes to hash; whether it loads is Gate 2's verdict
        return sorted(files)
    for tensor in _tensors(proto.graph):
        if tensor.data_location == TensorProto.EXTERNAL:
            entry = {e.key: e.value for e in tensor.external_data}
            files.add(Path(entry["location"]).as_posix())
    return sorted(files)


def file_sha256(path: Path) -> str:
    """The sha256 of one file's content."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def tree_sha256(root: Path, files: list[str]) -> str:
    """One sha256 over the sorted relative paths, sizes and contents of `files` under `root`."""
    h = hashlib.sha256()
    for rel in sorted(files):
        path = root / rel
        h.update(rel.encode() + b"\0" + path.stat().st_size.to_bytes(8, "big"))
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    return h.hexdigest()


def exported_hash(onnx_file: Path, scheme: str | None) -> tuple[str, list[str]]:
    """The hash of the model at `onnx_file` under the scheme its export recorded, and the files it covers.

    Raises:
        IntegrityError: a scheme this version of champion does not know.
        OSError: a file of the model is missing or unreadable.
    """
    if scheme == SCHEME:
        return onnx_sha256(onnx_file)
    if scheme is None:  # exports made before the tree hash: one file
        return hashlib.sha256(onnx_file.read_bytes()).hexdigest(), [onnx_file.name]
    raise IntegrityError(f"the export records an ONNX hash of unknown scheme {scheme!r}: upgrade champion")


def onnx_sha256(onnx_file: Path) -> tuple[str, list[str]]:
    """The tree hash of an ONNX model and the files it covers."""
    files = model_files(onnx_file)
    return tree_sha256(onnx_file.parent, files), files
