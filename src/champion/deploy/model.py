"""The model `champion serve` serves: a registry version of `<name>-onnx`, verified and opened.

`load_model` downloads the version, checks its files against the sha256 recorded at export (an
`IntegrityError` on a mismatch: nothing unverified is served) and opens an ONNX Runtime session. What
the protocol says about the model (`/v2/models/<name>` metadata) is read from that session, and the
image preprocessing from the export's record and the training run, never from server flags.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from champion import names
from champion.deploy import oip
from champion.errors import ChampionError, ConfigError
from champion.preprocessing import Preprocessing
from champion.registry import exports, tracking

IMAGE_INPUT = "image"  # the BYTES input that takes encoded image files (JPEG, PNG, ...)
_JSON_SLACK = 1024  # JSON values a request may hold besides its tensors' (ids, shapes, parameters)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # OIP datatype (FP32, INT64, ...)
    shape: tuple[int, ...]  # -1 where the graph's dimension is symbolic

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass
class ServedModel:
    """One registry version, loaded and verified."""

    name: str  # the name served under /v2/models/ (the base name, without -onnx)
    version: str
    registry_name: str  # <name>-onnx
    sha256: str
    session: Any  # onnxruntime.InferenceSession
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    labels: list[str]
    preprocessing: Preprocessing | None  # None when the graph does not take one image tensor
    batched: bool  # every input and output has a symbolic first axis

    def max_json_values(self, max_batch_size: int, max_elements: int) -> int:
        """The most JSON values a request for this model can need: its inputs' elements at the largest
        batch, one file per item for the image input, and room for names and parameters. A body is
        held to this before it is parsed (see `oip.parse_request`), whatever shapes it declares."""
        total = max_batch_size if self.preprocessing is not None else 0
        for t in self.inputs:
            dims = [max_batch_size if i == 0 and self.batched else d for i, d in enumerate(t.shape)]
            if any(d < 0 for d in dims):  # a symbolic axis past the batch: only --max-elements bounds it
                return max_elements + _JSON_SLACK
            total += math.prod(dims)
        return min(total, max_elements) + _JSON_SLACK

    def metadata(self) -> dict[str, Any]:
        inputs = [t.metadata() for t in self.inputs]
        if self.preprocessing is not None:
            inputs.append({"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]})
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": "onnxruntime_onnx",
            "inputs": inputs,
            "outputs": [t.metadata() for t in self.outputs],
        }


def resolve_name(model_name: str | None) -> str:
    """The base name to serve: `model_name` without -onnx, or the one `-onnx` model the registry holds.

    An int8 model's name (`<name>-onnx-int8`) is returned whole: `names.served_names` maps it.
    """
    if model_name and model_name.endswith(names.INT8_SUFFIX):
        return model_name
    if model_name:
        return model_name.removesuffix(names.ONNX_SUFFIX)
    validated = sorted(m.name for m in tracking.registered_models() if m.name.endswith(names.ONNX_SUFFIX))
    if len(validated) != 1:
        found = ", ".join(validated) or "none"
        raise ConfigError(f"--model-name is needed: the registry holds {len(validated)} validated ONNX models ({found}), not exactly one")
    return validated[0].removesuffix(names.ONNX_SUFFIX)


def load_model(
    model_name: str | None = None, alias: str = tracking.DEPLOY_ALIAS, version: str | None = None, quiet: bool = False
) -> ServedModel:
    """Download `<name>-onnx` at `version` (or `@alias`), check its hash, and open an ONNX Runtime session.

    Raises:
        ChampionError: unknown model, alias or version; not a Quality Gate 2 pass.
        IntegrityError: the files do not hash to what the export recorded.
    """
    tracking.setup_tracking(quiet)
    base, registry_name = names.served_names(resolve_name(model_name))
    mv = exports.deployable(registry_name, alias, version)
    with tempfile.TemporaryDirectory(prefix="champion-serve-") as tmp:
        graph, record, digest, _ = exports.verified_graph(mv, Path(tmp))
        # External data is read when the session is created, so the download can go right after.
        session = _session(graph)
    where = f"{mv.name} v{mv.version}"
    inputs = [_spec(v, where) for v in session.get_inputs()]
    outputs = [_spec(v, where) for v in session.get_outputs()]
    if IMAGE_INPUT in {t.name for t in inputs + outputs}:
        raise ChampionError(f"{where}: the graph has a tensor named {IMAGE_INPUT!r}, the name of the image-file input")
    preprocessing = _preprocessing(inputs, record)
    batched = all(t.shape and t.shape[0] == -1 for t in inputs + outputs)
    return ServedModel(base, str(mv.version), mv.name, digest, session, inputs, outputs, record.classes, preprocessing, batched)


def _session(graph: Path) -> Any:
    import onnxruntime as ort  # heavy: loaded when a model is, not with `import champion.cli`

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # ONNX Runtime's intra-op threads spin between runs by default, burning the cores that the event loop
    # (serve) and the image decoders (predict) need: off, serve's requests/s at 32 clients rose by 1.3-1.7x
    # and its p99 fell from 107 to 9 ms; predict took 0.55 s for 2,000 JPEGs instead of 0.74 (docs/benchmarks.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])


def _spec(value: Any, where: str) -> TensorSpec:
    """An ONNX Runtime NodeArg as the protocol describes it."""
    datatype = oip.ORT_TYPES.get(value.type)
    if datatype is None:
        raise ChampionError(f"{where}: graph value {value.name!r} has type {value.type}, which the protocol cannot carry")
    return TensorSpec(value.name, datatype, tuple(d if isinstance(d, int) and d >= 0 else -1 for d in value.shape))


def _preprocessing(inputs: list[TensorSpec], record: exports.ExportRecord) -> Preprocessing | None:
    """How image files become the graph's one FP32 image tensor; None when the graph takes something else."""
    pre = record.preprocessing
    [first, *rest] = inputs
    if rest or first.datatype != "FP32" or first.shape[1:] != (pre["channels"], *pre["image_size"]):
        return None
    # Resize policy and pixel cap: the training run's params, as ingestion used them.
    params = tracking.get_run(record.parent_run_id).data.params if record.parent_run_id else {}
    return Preprocessing.from_dict(pre, params)
