"""The Open Inference Protocol over gRPC: KServe v2's `inference.GRPCInferenceService` for `champion serve --grpc-port`.

ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata and ModelInfer, the calls
`tritonclient.grpc` and KServe's clients make, on a `grpc.aio` server in the event loop uvicorn runs
in. It is a second door to the HTTP server's `Service`: the same model (and reloads), readiness,
limits, metrics and batcher, so requests from both protocols share ONNX Runtime batches. A request is
held to the HTTP rules by the same code (`oip.check_input`, `oip.from_binary`, `prepare.prepare`);
only reading the protobuf message and writing the answer are here.

- Inputs come as `raw_input_contents` (what tritonclient.grpc sends: one entry per input,
  little-endian, BYTES elements each a 4-byte length and the bytes) or typed `contents` (the field of
  the datatype: `fp32_contents`, ...). BYTES are bytes either way: image files go in the input
  `image` as they are, never base64.
- Outputs go back as `raw_output_contents`, in the order of `outputs`; an output requested with
  parameter `classification: k` comes back as BYTES "score:index:label", as over HTTP.
- Errors are the call's status: INVALID_ARGUMENT (HTTP's 400), NOT_FOUND (404), RESOURCE_EXHAUSTED
  (413; a message over --max-request-bytes is refused by gRPC itself, before it is read),
  UNAVAILABLE (503: starting or stopping), INTERNAL (500).

The messages are the generated modules in `champion.deploy.proto` (scripts/gen_grpc.py writes them).
"""

from __future__ import annotations

import asyncio
import functools
import math
from typing import Any

import grpc
import numpy as np

from champion import __version__
from champion.deploy import oip
from champion.deploy.model import ServedModel
from champion.deploy.oip import OIPError
from champion.deploy.prepare import outputs_for
from champion.deploy.proto import grpc_predict_v2_pb2 as pb
from champion.deploy.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from champion.deploy.service import EXTENSIONS, SERVER_NAME, Prepared, Service
from champion.errors import ChampionError

# HTTP status of an OIPError -> the gRPC status it is answered with.
STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    500: grpc.StatusCode.INTERNAL,
}
# The field of InferTensorContents that carries each datatype's values (FP16 has none: raw only).
CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}  # fmt: skip
GRACE_SECONDS = 30  # as uvicorn's timeout_graceful_shutdown in champion.deploy.serve


class GrpcServer:
    """The gRPC door: `start` binds and serves in the running loop; `begin_stop` and `stop` drain it."""

    def __init__(self, service: Service, host: str, port: int):
        self.service = service
        self.host = host
        self.port = port  # the one bound, once started (0 asks the kernel for a free one)
        self.server: grpc.aio.Server | None = None
        self._stopping: asyncio.Future | None = None

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"  # IPv6 literals in brackets

    async def start(self) -> int:
        """Bind and start serving; the port bound (the one asked for, or the kernel's pick for 0).

        Raises:
            ChampionError: the address cannot be bound (`champion.deploy.serve` checks first, so that
                a busy port is its one line; this is the rare race after that check).
        """
        limit = self.service.limits.max_request_bytes
        self.server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", limit),  # larger: RESOURCE_EXHAUSTED from gRPC, unread
            ("grpc.max_send_message_length", -1),  # a response is as large as the model's outputs make it
            ("grpc.so_reuseport", 0),  # gRPC's default would let a second server share the port unnoticed
        ])  # fmt: skip
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(self.service), self.server)
        try:
            self.port = self.server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise ChampionError(f"cannot listen on {self.address} for gRPC: {exc}") from None
        await self.server.start()
        self.service.on_stop.append(self.stop)  # drained before the batcher stops
        return self.port

    def begin_stop(self) -> None:
        """Stop taking calls now; those in flight go on (up to GRACE_SECONDS). Once, however often called."""
        if self.server is not None and self._stopping is None:
            self._stopping = asyncio.ensure_future(self.server.stop(GRACE_SECONDS))

    async def stop(self) -> None:
        """`begin_stop`, then wait until the calls in flight have finished."""
        self.begin_stop()
        if self._stopping is not None:
            await self._stopping


class Servicer(pb_grpc.GRPCInferenceServiceServicer):
    """The six calls of the protocol over the `Service` shared with HTTP."""

    def __init__(self, service: Service):
        self.service = service

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.service.ready)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        await self._find(request.name, request.version, context)
        return pb.ModelReadyResponse(ready=self.service.ready)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        meta = (await self._find(request.name, request.version, context)).metadata()  # the dict HTTP answers with
        tensors = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[tensors(**t) for t in meta["inputs"]], outputs=[tensors(**t) for t in meta["outputs"]],
        )  # fmt: skip

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        try:
            return await self.service.measured(self._infer(request))
        except OIPError as exc:
            await context.abort(STATUS.get(exc.status, grpc.StatusCode.INTERNAL), str(exc))
            raise  # not reached: abort raises

    async def _infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        service = self.service

        async def prepared(m: ServedModel) -> Prepared:
            return await service.prepare(request.ByteSize(), functools.partial(parse_request, request), m)

        m, req, results = await service.infer(request.model_name, request.model_version, prepared)
        return _response(m, req, outputs_for(m, req, results))

    async def _find(self, name: str, version: str, context: grpc.aio.ServicerContext) -> ServedModel:
        try:
            return self.service.find(name, version)
        except OIPError as exc:
            await context.abort(STATUS[exc.status], str(exc))
            raise  # not reached: abort raises


def parse_request(request: pb.ModelInferRequest, max_elements: int, max_items: int | None = None, max_values: int | None = None) -> oip.InferRequest:
    """The protocol's request (as `oip.parse_request` makes from HTTP) from a ModelInferRequest.

    `max_items`: the most BYTES elements an input may declare. `max_values`: the most typed values
    (`contents`) a request may hold: turning each into a Python number holds the GIL, as parsing JSON
    does, so the same bound as for a JSON body applies; raw contents are not bounded by it.
    """
    if not request.inputs:
        raise OIPError("the request has no inputs")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise OIPError(f"raw_input_contents holds {len(raw)} entries for {len(request.inputs)} inputs: one per input, in order")
    inputs: dict[str, tuple[str, list[int], np.ndarray]] = {}
    elements = values = 0
    for i, tensor in enumerate(request.inputs):
        name, datatype, shape = tensor.name or None, tensor.datatype, list(tensor.shape)
        elements = oip.check_input(i, name, datatype, shape, inputs, max_elements, max_items, elements)
        if raw:
            if tensor.HasField("contents"):
                raise OIPError(f"input {name!r} has both contents and raw_input_contents")
            array = oip.from_binary(name, datatype, shape, raw[i], "raw_input_contents")
        else:
            field = CONTENTS.get(datatype)
            if field is None:
                raise OIPError(f"input {name!r}: {datatype} has no contents field; send it in raw_input_contents")
            others = sorted(f.name for f, _ in tensor.contents.ListFields() if f.name != field)
            if others:
                raise OIPError(f"input {name!r}: {datatype} values go in contents.{field}, not {', '.join(others)}")
            given = getattr(tensor.contents, field)
            values += len(given)
            if max_values is not None and values > max_values:
                raise OIPError(f"the request's contents hold more than {max_values} values, more than this model's inputs take "
                               "at --max-batch-size; send fewer items per request, or the tensors as raw_input_contents", 413)  # fmt: skip
            array = _from_contents(name, datatype, shape, given, f"contents.{field}")
        inputs[name] = (datatype, shape, array)
    outputs = []
    for i, out in enumerate(request.outputs):
        if not out.name:
            raise OIPError(f"outputs[{i}] has no name")
        outputs.append(oip.requested_output(out.name, _params(out.parameters), True))
    # Every input came as bytes (binary_inputs): image files are never base64 here.
    return oip.InferRequest(request.id or None, inputs, outputs or None, True, _params(request.parameters), set(inputs))


def _from_contents(name: str, datatype: str, shape: list[int], given: Any, field: str) -> np.ndarray:
    if datatype != "BYTES":
        return oip.from_values(name, datatype, shape, list(given), field)
    count = math.prod(shape)
    if len(given) != count:
        raise OIPError(f"input {name!r}: shape {shape} needs {count} elements, {field} holds {len(given)}")
    array = np.empty(count, dtype=np.object_)
    array[:] = list(given)
    return array.reshape(shape)


def _params(params: Any) -> dict[str, Any]:
    """A map<string, InferParameter> as plain values (bool, int, str, float)."""
    return {key: getattr(p, p.WhichOneof("parameter_choice")) for key, p in params.items() if p.WhichOneof("parameter_choice")}


def _response(m: ServedModel, req: oip.InferRequest, outputs: list[tuple[str, np.ndarray, bool]]) -> pb.ModelInferResponse:
    """The answer: each output's name, datatype and shape, its values in raw_output_contents."""
    response = pb.ModelInferResponse(model_name=m.name, model_version=m.version, id=req.id or "")
    for name, array, _ in outputs:  # binary or not, gRPC answers raw
        response.outputs.add(name=name, datatype=oip.datatype_of(array), shape=array.shape)
        response.raw_output_contents.append(oip.to_binary(array))
    return response
