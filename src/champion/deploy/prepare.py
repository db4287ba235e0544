"""Between the protocol and the model: a parsed OIP request checked against the served model and
turned into ONNX Runtime's feed, and the session's results turned into the response body.

Image files (the `image` BYTES input) are prepared by `champion.ingest.decode`, the code ingestion used
on the training images, with the image size, channels and resize policy the export recorded; the
graph normalises, so here uint8 is only scaled to [0, 1], as training did.
"""

from __future__ import annotations

import io

import numpy as np

from champion.deploy import oip
from champion.deploy.limits import Limits
from champion.deploy.model import IMAGE_INPUT, ServedModel
from champion.deploy.oip import OIPError


def prepare(model: ServedModel, req: oip.InferRequest, limits: Limits) -> tuple[dict[str, np.ndarray], int]:
    """The feed for ONNX Runtime and the number of items, or an OIPError that says what is wrong."""
    given = set(req.inputs)
    if IMAGE_INPUT in given and model.preprocessing is not None:
        if given != {IMAGE_INPUT}:
            raise OIPError(f"input {IMAGE_INPUT!r} (image files) goes alone, not with {sorted(given - {IMAGE_INPUT})}")
        # base64 text when the files came in JSON, whatever carried the other inputs (per input, as the protocol says)
        return _images(model, req.inputs[IMAGE_INPUT], limits, IMAGE_INPUT not in req.binary_inputs)
    expected = {t.name for t in model.inputs}
    accepted = sorted(expected | ({IMAGE_INPUT} if model.preprocessing is not None else set()))
    if given - expected:
        raise OIPError(f"unknown input {sorted(given - expected)}; model {model.name!r} takes {accepted}")
    if expected - given:
        raise OIPError(f"missing input {sorted(expected - given)}; model {model.name!r} takes {accepted}")
    feed, rows = {}, set()
    for spec in model.inputs:
        datatype, shape, array = req.inputs[spec.name]
        if datatype != spec.datatype:
            raise OIPError(f"input {spec.name!r} is {spec.datatype}, not {datatype}")
        if len(shape) != len(spec.shape) or any(want not in (-1, got) for want, got in zip(spec.shape, shape)):
            raise OIPError(f"input {spec.name!r} has shape {list(spec.shape)} (-1: any), not {shape}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise OIPError(f"input {spec.name!r} holds NaN or infinite values")
        feed[spec.name] = array
        rows.add(shape[0] if shape else 1)
    if len(rows) != 1:
        raise OIPError(f"the inputs disagree on the batch size: {sorted(rows)}")
    n = rows.pop()
    _check_rows(model, n, limits)
    return feed, n


def _check_rows(model: ServedModel, n: int, limits: Limits) -> None:
    """One request is at most one batch: the batcher never splits a request."""
    if n < 1:
        raise OIPError("the batch is empty")
    if model.batched and n > limits.max_batch_size:
        raise OIPError(f"a batch of {n} is more than --max-batch-size {limits.max_batch_size}: split the request")


def _images(
    model: ServedModel, given: tuple[str, list[int], np.ndarray], limits: Limits, json_images: bool
) -> tuple[dict[str, np.ndarray], int]:
    """The graph's image tensor from encoded image files (base64 text when they came in JSON)."""
    from champion.ingest.decode import decode  # lazy: the champion.ingest package (cache, sources) comes along; only image requests need it

    datatype, shape, array = given
    pre = model.preprocessing
    assert pre is not None
    if datatype != "BYTES" or len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise OIPError(f"input {IMAGE_INPUT!r} is BYTES of shape [-1] (one encoded image file per item), not {datatype} {shape}")
    n = shape[0]
    _check_rows(model, n, limits)
    if n * pre.channels * pre.image_size[0] * pre.image_size[1] > limits.max_elements:
        raise OIPError(f"{n} images of {pre.channels}x{pre.image_size[0]}x{pre.image_size[1]} are more than {limits.max_elements} elements (--max-elements)", 413)
    files = oip.decode_base64_images(array, IMAGE_INPUT) if json_images else array
    out = np.empty((n, pre.channels, *pre.image_size), dtype=np.float32)
    for i, data in enumerate(files.reshape(-1)):
        pixels, reason = decode(io.BytesIO(data), pre.image_size, pre.channels, pre.resize, pre.max_pixels)
        if pixels is None:
            raise OIPError(f"input {IMAGE_INPUT!r}: element {i} is not a readable image ({reason})")
        # uint8 to [0, 1] in float32, as training's evaluate.to_float did; the graph normalises.
        out[i] = pixels.astype(np.float32) / np.float32(255)
    return {model.inputs[0].name: out}, n


def respond(model: ServedModel, req: oip.InferRequest, results: list[np.ndarray]) -> tuple[bytes, int | None]:
    """The response body for the outputs the request asked for (all by default), and its JSON header's length."""
    return oip.encode_response(model.name, model.version, req.id, outputs_for(model, req, results))


def outputs_for(model: ServedModel, req: oip.InferRequest, results: list[np.ndarray]) -> list[tuple[str, np.ndarray, bool]]:
    """(name, array, binary) of each output the request asked for (all by default), in its order;
    classification outputs as their top-k "score:index:label" strings. Both protocols answer from it."""
    by_name = {spec.name: r for spec, r in zip(model.outputs, results)}
    wanted = req.outputs if req.outputs is not None else [oip.RequestedOutput(t.name, req.binary_output) for t in model.outputs]
    out = []
    for o in wanted:
        array = by_name[o.name]
        out.append((o.name, oip.classify(array, o.classification, model.labels) if o.classification else array, o.binary))
    return out


def check_outputs(model: ServedModel, req: oip.InferRequest) -> None:
    """Refuse a request for outputs the model lacks before it costs a session run."""
    if req.outputs is None:
        return
    known = {t.name for t in model.outputs}
    unknown = [o.name for o in req.outputs if o.name not in known]
    if unknown:
        raise OIPError(f"unknown output {unknown}; model {model.name!r} has {sorted(known)}")
