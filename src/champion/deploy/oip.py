"""The Open Inference Protocol (KServe v2) over HTTP: request parsing and response encoding.

Pure numpy and json, no web framework: `champion.deploy.app` calls these with the raw body, and
`champion.deploy.prepare` to encode the response. The rules a tensor is held to whatever carried it
(`check_input`, `from_binary`, `from_values`, `requested_output`, `to_binary`) are public: the gRPC
door (`champion.deploy.grpc_service`) reads its messages with them.
Besides JSON tensors this speaks two of Triton's extensions, the ones `tritonclient.http` uses:

- binary tensor data: the body is a JSON header of `Inference-Header-Content-Length` bytes followed
  by the raw tensors of the inputs whose `parameters.binary_data_size` is set, in input order;
  outputs come back the same way when `binary_data` (per output) or `binary_data_output` (per
  request) asks for it. BYTES elements are each a 4-byte little-endian length and the bytes.
- classification: an output with `parameters.classification: k` comes back as BYTES
  `"score:index:label"`, the k highest scores per item, highest first.

Every failure is an `OIPError` carrying the HTTP status it should be answered with.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any, Container

import numpy as np
import orjson

HEADER_LENGTH = "Inference-Header-Content-Length"

# OIP datatype <-> numpy; BYTES are object arrays of bytes.
DTYPES: dict[str, Any] = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_,
}  # fmt: skip
# ONNX Runtime's type strings (session.get_inputs()[i].type) as OIP datatypes.
ORT_TYPES = {
    "tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16", "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64", "tensor(int8)": "INT8", "tensor(int16)": "INT16", "tensor(int32)": "INT32",
    "tensor(int64)": "INT64", "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}  # fmt: skip


class OIPError(Exception):
    """A request the server answers with `{"error": message}` and `status`."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class RequestedOutput:
    name: str
    binary: bool
    classification: int = 0  # k > 0: top-k "score:index:label" strings instead of the tensor


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, tuple[str, list[int], np.ndarray]]  # name -> (datatype, shape, array of that shape)
    outputs: list[RequestedOutput] | None  # None: every output
    binary_output: bool  # the request-level default (`binary_data_output`)
    parameters: dict[str, Any] = field(default_factory=dict)
    binary_inputs: set[str] = field(default_factory=set)  # inputs sent as binary data; the rest came as JSON


def _params(obj: dict[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters", {})
    if not isinstance(params, dict):
        raise OIPError(f"{where}: 'parameters' must be an object")
    return params


def parse_request(
    body: bytes, header_length: str | None, max_elements: int, max_items: int | None = None, max_values: int | None = None
) -> InferRequest:
    """An inference request from the raw body (JSON, or JSON header plus binary tensor data).

    `max_items`: the most BYTES elements (encoded files) a request may declare: checked before any is read.
    `max_values`: the most JSON values the JSON part may hold, checked from its bytes before it is
    parsed: a JSON parser holds the GIL for the whole document, so a body of millions of numbers
    would stall every other request (health checks included) and take gigabytes as Python objects.
    """
    header, binary = _split_body(body, header_length)
    if max_values is not None and header.count(b",") >= max_values:  # n values in an array: n - 1 commas
        raise OIPError(f"the request's JSON holds more than {max_values} values, more than this model's inputs take "
                       "at --max-batch-size; send fewer items per request, or the tensors as binary data", 413)  # fmt: skip
    try:
        req = _loads(header)
    except (ValueError, UnicodeDecodeError) as exc:
        raise OIPError(f"the request is not valid JSON: {exc}") from None
    except RecursionError:  # orjson stops at 1024 levels; the standard parser behind it at the stack's end
        raise OIPError("the request's JSON is nested too deeply") from None
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list) or not req["inputs"]:
        raise OIPError("the request must be a JSON object with a non-empty 'inputs' list")
    request_id = req.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise OIPError("'id' must be a string")
    params = _params(req, "request")
    inputs, sent_binary = _inputs(req["inputs"], binary, max_elements, max_items)
    outputs = _outputs(req.get("outputs"), params)
    return InferRequest(request_id, inputs, outputs, bool(params.get("binary_data_output", False)), params, sent_binary)


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary tensor data after it (none without `header_length`)."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        n = int(header_length)
    except ValueError:
        raise OIPError(f"{HEADER_LENGTH}: {header_length!r} is not a whole number of bytes") from None
    if not 0 < n <= len(body):
        raise OIPError(f"{HEADER_LENGTH} is {n} but the body holds {len(body)} bytes")
    return body[:n], memoryview(body)[n:]


def _inputs(
    specs: list[Any], binary: memoryview, max_elements: int, max_items: int | None = None
) -> tuple[dict[str, tuple[str, list[int], np.ndarray]], set[str]]:
    """The request's input tensors by name, and the names of those sent as binary data; the binary
    data must be exactly what they account for."""
    inputs: dict[str, tuple[str, list[int], np.ndarray]] = {}
    sent_binary: set[str] = set()
    offset = 0
    elements = 0
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict):
            raise OIPError(f"inputs[{i}] must be an object")
        name, datatype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
        elements = check_input(i, name, datatype, shape, inputs, max_elements, max_items, elements)
        size = _params(spec, f"input {name!r}").get("binary_data_size")
        if size is not None:
            array = from_binary(name, datatype, shape, _binary_slice(spec, name, size, binary, offset))
            offset += size
            sent_binary.add(name)
        else:
            if "data" not in spec:
                raise OIPError(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
            array = _from_json(name, datatype, shape, spec["data"])
        inputs[name] = (datatype, shape, array)
    if offset != len(binary):
        raise OIPError(f"the body holds {len(binary) - offset} bytes of binary data that no input's binary_data_size accounts for")
    return inputs, sent_binary


def check_input(
    i: int, name: Any, datatype: Any, shape: Any, seen: Container[str], max_elements: int, max_items: int | None, elements: int
) -> int:
    """Input `i`'s name, datatype and shape checked before its data is read; the request's element
    count with it (`elements`: the inputs before it).

    `seen`: the names of the inputs before it. `max_items`: the most BYTES elements (files) an input may declare.
    """
    if not isinstance(name, str):
        raise OIPError(f"inputs[{i}] has no 'name'")
    if name in seen:
        raise OIPError(f"input {name!r} is given twice")
    if datatype not in DTYPES:
        raise OIPError(f"input {name!r}: unknown datatype {datatype!r} (one of {', '.join(DTYPES)})")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise OIPError(f"input {name!r}: 'shape' must be a list of non-negative integers")
    if any(d > max_elements for d in shape):  # even with a 0 elsewhere: no array has such an axis
        raise OIPError(f"input {name!r}: shape {shape} has an axis longer than {max_elements} elements (--max-elements)")
    if datatype == "BYTES" and max_items is not None and math.prod(shape) > max_items:
        # One element is one file: a request declaring millions is refused before any is read.
        raise OIPError(f"input {name!r}: shape {shape} declares more than {max_items} BYTES elements (--max-batch-size)")
    elements += math.prod(shape)
    if elements > max_elements:
        raise OIPError(f"the request holds more than {max_elements} tensor elements (--max-elements)", 413)
    return elements


def _binary_slice(spec: dict[str, Any], name: str, size: Any, binary: memoryview, offset: int) -> memoryview:
    """The `size` bytes of binary data at `offset` that an input's binary_data_size claims."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise OIPError(f"input {name!r}: binary_data_size must be a non-negative integer")
    if "data" in spec:
        raise OIPError(f"input {name!r} has both 'data' and binary_data_size")
    if offset + size > len(binary):
        raise OIPError(
            f"input {name!r}: binary_data_size {size} runs past the end of the body "
            f"({len(binary) - offset} bytes of binary data left): truncated request?"
        )
    return binary[offset : offset + size]


def _outputs(specs: Any, params: dict[str, Any]) -> list[RequestedOutput] | None:
    """The outputs the request names (None: all), binary per output or by the request's default."""
    if specs is None:
        return None
    if not isinstance(specs, list):
        raise OIPError("'outputs' must be a list")
    outputs = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise OIPError(f"outputs[{i}] must be an object with a 'name'")
        outputs.append(requested_output(spec["name"], _params(spec, f"output {spec['name']!r}"), params.get("binary_data_output", False)))
    return outputs


def requested_output(name: str, params: dict[str, Any], binary: Any) -> RequestedOutput:
    """An output the request names, with its parameters; `binary`: the request's default for `binary_data`."""
    k = params.get("classification", 0)
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise OIPError(f"output {name!r}: classification must be a non-negative integer")
    return RequestedOutput(name, bool(params.get("binary_data", binary)), k)


def from_binary(name: str, datatype: str, shape: list[int], raw: memoryview | bytes, field: str = "binary_data_size") -> np.ndarray:
    """An input's array from its raw little-endian bytes (BYTES: each element a 4-byte length and its
    bytes); `field` names where the bytes came from in the messages."""
    count = math.prod(shape)
    if datatype == "BYTES":
        items, pos = [], 0
        while pos < len(raw):
            if pos + 4 > len(raw):
                raise OIPError(f"input {name!r}: BYTES data ends inside an element's 4-byte length")
            (n,) = struct.unpack_from("<I", raw, pos)
            if pos + 4 + n > len(raw):
                raise OIPError(f"input {name!r}: a BYTES element of {n} bytes runs past {field}")
            items.append(bytes(raw[pos + 4 : pos + 4 + n]))
            pos += 4 + n
        if len(items) != count:
            raise OIPError(f"input {name!r}: shape {shape} needs {count} BYTES elements, the binary data holds {len(items)}")
        array = np.empty(count, dtype=np.object_)
        array[:] = items
        return array.reshape(shape)
    dtype = np.dtype(DTYPES[datatype])
    if len(raw) != count * dtype.itemsize:
        raise OIPError(
            f"input {name!r}: {field} is {len(raw)} bytes but shape {shape} of {datatype} takes {count * dtype.itemsize}"
        )
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype, copy=True).reshape(shape)


def _from_json(name: str, datatype: str, shape: list[int], data: Any) -> np.ndarray:
    count = math.prod(shape)
    if not isinstance(data, list):
        raise OIPError(f"input {name!r}: 'data' must be a list")
    if datatype == "BYTES":
        flat = _flatten(data, name)
        if not all(isinstance(x, str) for x in flat):
            raise OIPError(f"input {name!r}: BYTES data in JSON are strings (base64 for binary content such as images)")
        if len(flat) != count:
            raise OIPError(f"input {name!r}: shape {shape} needs {count} elements, 'data' holds {len(flat)}")
        array = np.empty(count, dtype=np.object_)
        array[:] = [x.encode() for x in flat]
        return array.reshape(shape)
    return from_values(name, datatype, shape, data)


def from_values(name: str, datatype: str, shape: list[int], data: Any, field: str = "'data'") -> np.ndarray:
    """A numeric input's array from its values (a nested list, or a sequence of numbers): their count,
    kind and range checked against `datatype` and `shape`; `field` names them in the messages."""
    count = math.prod(shape)
    try:
        raw = np.asarray(data)
    except ValueError:
        raise OIPError(f"input {name!r}: {field} is a ragged nested list") from None
    if raw.size != count:
        raise OIPError(f"input {name!r}: shape {shape} needs {count} elements, {field} holds {raw.size}")
    kind = "b" if datatype == "BOOL" else ("biuf" if datatype.startswith("FP") else "biu")
    if raw.size and raw.dtype.kind not in kind:
        raise OIPError(f"input {name!r}: {field} holds values that are not {datatype} (found {raw.dtype.kind!r} values)")
    dtype = np.dtype(DTYPES[datatype])
    with np.errstate(over="ignore", invalid="ignore"):
        array = raw.astype(dtype).reshape(shape)
    if dtype.kind in "iu" and raw.size and not np.array_equal(array.reshape(-1), raw.reshape(-1)):
        raise OIPError(f"input {name!r}: values out of the range of {datatype}")
    return array


def _flatten(data: list, name: str) -> list:
    out: list = []
    stack = [iter(data)]
    while stack:
        for x in stack[-1]:
            if isinstance(x, list):
                stack.append(iter(x))
                break
            out.append(x)
        else:
            stack.pop()
    return out


def decode_base64_images(array: np.ndarray, name: str) -> np.ndarray:
    """JSON BYTES elements of an image input: base64 text to the file's bytes."""
    out = np.empty(array.shape, dtype=np.object_)
    for i, item in enumerate(array.reshape(-1)):
        try:
            out.reshape(-1)[i] = base64.b64decode(item, validate=True)
        except ValueError:
            raise OIPError(f"input {name!r}: element {i} is not base64 (JSON carries image files as base64 strings)") from None
    return out


def classify(scores: np.ndarray, k: int, labels: list[str]) -> np.ndarray:
    """Top-k "score:index:label" per item (Triton's classification extension), shape (batch, k)."""
    flat = scores.reshape(scores.shape[0], -1) if scores.ndim > 1 else scores.reshape(1, -1)
    k = min(k, flat.shape[1])
    order = np.argsort(-flat, axis=1, kind="stable")[:, :k]
    out = np.empty((flat.shape[0], k), dtype=np.object_)
    for r, row in enumerate(order):
        for c, idx in enumerate(row):
            label = labels[idx] if idx < len(labels) else ""
            out[r, c] = f"{flat[r, idx]:g}:{idx}:{label}".encode()
    return out if scores.ndim > 1 else out[0]


def encode_response(
    model_name: str, version: str, request_id: str | None, outputs: list[tuple[str, np.ndarray, bool]]
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header's length."""
    header: dict[str, Any] = {"model_name": model_name, "model_version": version}
    if request_id is not None:
        header["id"] = request_id
    entries, chunks = [], []
    for name, array, binary in outputs:
        datatype = datatype_of(array)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            raw = to_binary(array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif datatype == "BYTES":
            entry["data"] = [x.decode("utf-8", "replace") for x in array.reshape(-1)]
        else:
            entry["data"] = array.reshape(-1).tolist()
        entries.append(entry)
    header["outputs"] = entries
    text = orjson.dumps(header)
    if not chunks:
        return text, None
    return b"".join([text, *chunks]), len(text)


def datatype_of(array: np.ndarray) -> str:
    if array.dtype == np.object_:
        return "BYTES"
    for name, dtype in DTYPES.items():
        if dtype is not np.object_ and array.dtype == np.dtype(dtype):
            return name
    raise OIPError(f"the model produced {array.dtype}, which the protocol has no datatype for", 500)


def to_binary(array: np.ndarray) -> bytes:
    """A tensor's raw little-endian bytes (BYTES: each element a 4-byte length and its bytes)."""
    if array.dtype == np.object_:
        return b"".join(struct.pack("<I", len(x)) + x for x in array.reshape(-1))
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def _loads(text: bytes | str) -> Any:
    """JSON with orjson: parsing the numbers of a JSON tensor is most of a JSON request's cost, and
    orjson does it about ten times faster than the standard library. Python clients write NaN and
    Infinity as bare tokens, which are not JSON; the standard parser reads those, so that the error
    names the value rather than calling the body malformed."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
