"""Triton's model configuration for an ONNX classifier: `config.pbtxt` from the graph, and `labels.txt`.

Everything here is derived from the exported graph (its inputs, outputs and their shapes) and the
export record's class names, so the configuration can never disagree with the model it describes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from champion.errors import ChampionError

# onnx is imported inside the functions that read a graph: `champion --help` imports this module
# (through champion.deploy.triton), and onnx takes a while to import.

LABELS = "labels.txt"
KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
# Largest batch Triton's dynamic batcher forms from queued requests; our classifiers are tiny per image.
MAX_BATCH_SIZE = 64
# How long the batcher may hold a request to fill a batch: 0.1 ms, a small price against per-request overhead.
MAX_QUEUE_DELAY_US = 100


@dataclass(frozen=True)
class Tensor:
    """One graph input or output as Triton sees it."""

    name: str
    data_type: str  # Triton's TYPE_*
    shape: tuple[int | None, ...]  # None where the ONNX dimension is symbolic (dim_param) or unknown


def _onnx_to_triton() -> dict[int, str]:
    from onnx import TensorProto as T

    return {
        T.BOOL: "TYPE_BOOL", T.UINT8: "TYPE_UINT8", T.UINT16: "TYPE_UINT16", T.UINT32: "TYPE_UINT32",
        T.UINT64: "TYPE_UINT64", T.INT8: "TYPE_INT8", T.INT16: "TYPE_INT16", T.INT32: "TYPE_INT32",
        T.INT64: "TYPE_INT64", T.FLOAT16: "TYPE_FP16", T.FLOAT: "TYPE_FP32", T.DOUBLE: "TYPE_FP64",
        T.STRING: "TYPE_STRING", T.BFLOAT16: "TYPE_BF16",
    }  # fmt: skip


def graph_tensors(graph: Path) -> tuple[list[Tensor], list[Tensor]]:
    """The inputs (initializers excluded) and outputs of an ONNX graph, read without its external data."""
    import onnx

    proto = onnx.load(str(graph), load_external_data=False)
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [_tensor(v) for v in proto.graph.input if v.name not in initializers]
    return inputs, [_tensor(v) for v in proto.graph.output]


def _tensor(value) -> Tensor:
    if value.type.WhichOneof("value") != "tensor_type":
        raise ChampionError(f"ONNX graph value {value.name!r} is not a tensor: Triton's onnxruntime backend serves tensors only")
    tt = value.type.tensor_type
    dtype = _onnx_to_triton().get(tt.elem_type)
    if dtype is None:
        raise ChampionError(f"ONNX graph value {value.name!r} has element type {tt.elem_type}, which Triton has no type for")
    if not tt.HasField("shape"):
        raise ChampionError(f"ONNX graph value {value.name!r} has no shape: Triton needs its rank")
    return Tensor(value.name, dtype, tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim))


def model_config(
    name: str, version: str, inputs: list[Tensor], outputs: list[Tensor], num_classes: int, kind: str, instances: int, note: str = ""
) -> str:
    """Triton's `config.pbtxt` (protobuf text of `inference.ModelConfig`) for an ONNX classifier.

    The batch axis is Triton's when every input and output has a symbolic first dimension: then
    `max_batch_size` > 0, dims leave it out, and requests are batched dynamically. Otherwise
    `max_batch_size` is 0 and dims are the whole shapes. Symbolic dimensions elsewhere are -1.
    The one output whose per-item shape is `[num_classes]` gets `label_filename`.
    """
    tensors = inputs + outputs
    batched = all(t.shape and t.shape[0] is None for t in tensors)
    labelled = [t for t in outputs if t.shape[1 if batched else 0 :] == (num_classes,)]
    if len(labelled) != 1:
        shapes = ", ".join(f"{t.name} {list(t.shape)}" for t in outputs)
        raise ChampionError(f"cannot tell which output holds the {num_classes} class scores (outputs: {shapes})")

    def entry(t: Tensor, label: bool) -> list[str]:
        dims = [-1 if d is None else d for d in (t.shape[1:] if batched else t.shape)]
        lines = [f"name: {_quote(t.name)}", f"data_type: {t.data_type}"]
        if dims:
            lines.append(f"dims: [ {', '.join(map(str, dims))} ]")
        else:  # only the batch axis: Triton wants dims [1] reshaped to a scalar per item
            lines += ["dims: [ 1 ]", "reshape: { shape: [ ] }"]
        if label:
            lines.append(f"label_filename: {_quote(LABELS)}")
        return lines

    def block(key: str, items: list[list[str]]) -> list[str]:
        out = [f"{key} ["]
        for i, lines in enumerate(items):
            out += ["  {", *(f"    {line}" for line in lines), "  }" + ("," if i < len(items) - 1 else "")]
        return out + ["]"]

    text = [f"# Written by `champion deploy triton` from {note or f'version {version}'}.",
            "# Derived from the ONNX graph; deploy again rather than editing it.",
            f"name: {_quote(name)}",
            'platform: "onnxruntime_onnx"',
            f"max_batch_size: {MAX_BATCH_SIZE if batched else 0}",
            f"version_policy: {{ specific: {{ versions: [ {version} ] }} }}",
            *block("input", [entry(t, False) for t in inputs]),
            *block("output", [entry(t, t is labelled[0]) for t in outputs]),
            *block("instance_group", [[f"count: {instances}", f"kind: {KINDS[kind]}"]])]  # fmt: skip
    if batched:
        text.append(f"dynamic_batching {{ max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US} }}")
    return "\n".join(text) + "\n"


def _quote(s: str) -> str:
    # Protobuf text format strings take C escapes; JSON's escapes of quote and backslash are the same.
    return json.dumps(s, ensure_ascii=False)


def labels_text(classes: list[str]) -> str:
    """`labels.txt`: class i on line i, the order of the model's scores."""
    bad = [c for c in classes if "\n" in c or "\r" in c]
    if bad:
        raise ChampionError(f"class names with line breaks cannot go in {LABELS} (one label a line): {bad!r}")
    return "".join(f"{c}\n" for c in classes)
