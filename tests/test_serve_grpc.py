"""`champion serve --grpc-port`: the Open Inference Protocol over gRPC, against HTTP and ONNX Runtime.

A real SQLite-backed MLflow with a model trained for one epoch on digits, the real server in its own
process serving HTTP and gRPC on free loopback ports, and real clients: tritonclient.grpc (raw
contents, what Triton's users send), Triton's generated stub for typed contents, tritonclient.http
for the HTTP answer the gRPC one must equal.
"""

from __future__ import annotations

import asyncio
import io
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from conftest import ShipModel, Shipped
from servers import ServeProcess, free_port, start_serve

pytestmark = pytest.mark.slow
grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is in the test extra")
httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is in the test extra")
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402 - Triton's own generated protocol
from tritonclient.utils import InferenceServerException  # noqa: E402

NAME = "grpc-cnn"


@pytest.fixture(scope="module")
def shipped(shipped_model: ShipModel) -> Shipped:
    """`champion run` for 1 epoch on digits: grpc-cnn-onnx v1 @deploy, the store's only -onnx model."""
    return shipped_model(NAME, "export.num_samples=20")


@pytest.fixture(scope="module")
def version(shipped: Shipped) -> str:
    return shipped.onnx_version


Server = ServeProcess


def _grpc_ready(server: ServeProcess) -> bool:
    try:
        return grpcclient.InferenceServerClient(server.grpc).is_server_ready()
    except InferenceServerException:
        return False


def start(*args: str) -> ServeProcess:
    """`champion serve` with HTTP and gRPC on free ports, once both answer ready."""
    return start_serve(*args, grpc=True, ready=_grpc_ready)


@pytest.fixture(scope="module")
def server(shipped: Shipped) -> Iterator[Server]:
    # The limits of test_serve's server: a 1 MiB message limit, batches of up to 64 from 20 ms.
    srv = start("--max-request-bytes", str(1024**2), "--max-delay-ms", "20", "--max-batch-size", "64")
    yield srv
    assert srv.stop() == 0, srv.proc.stderr.read()  # SIGTERM with both doors open: drained, exit 0


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def metric(server: Server, name: str) -> float:
    with urllib.request.urlopen(server.url + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ") or line.startswith(name + "{"))


@pytest.fixture(scope="module")
def reference(shipped: Shipped, version: str):
    """The registered graph in a direct ONNX Runtime session."""
    import mlflow
    import onnxruntime as ort

    from champion.registry import tracking

    tracking.setup_tracking()
    source = tracking.client().get_model_version(f"{NAME}-onnx", version).source
    path = Path(mlflow.get_logged_model(source.removeprefix("models:/")).artifact_location.removeprefix("file://")) / "model.onnx"
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)


def png(array: np.ndarray, level: int = 6) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def grpc_input(name: str, array: np.ndarray, datatype: str) -> Any:
    inp = grpcclient.InferInput(name, list(array.shape), datatype)
    inp.set_data_from_numpy(array)
    return inp


def http_answer(server: Server, inputs: list[tuple[str, np.ndarray, str]], **kw: Any) -> np.ndarray:
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    made = []
    for name, array, datatype in inputs:
        inp = httpclient.InferInput(name, list(array.shape), datatype)
        inp.set_data_from_numpy(array)
        made.append(inp)
    outputs = [httpclient.InferRequestedOutput("logits", **kw)]
    return client.infer(NAME, made, outputs=outputs).as_numpy("logits")


def test_live_ready_and_metadata_match_http(server: Server, version: str) -> None:
    client = grpcclient.InferenceServerClient(server.grpc)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(NAME) and client.is_model_ready(NAME, version)
    assert client.get_server_metadata(as_json=True) == get(server.url + "/v2")[1]
    for v in ("", version):
        meta = client.get_model_metadata(NAME, v, as_json=True)
        for tensor in meta["inputs"] + meta["outputs"]:
            tensor["shape"] = [int(d) for d in tensor["shape"]]  # protobuf's JSON writes int64 as strings
        assert meta == get(f"{server.url}/v2/models/{NAME}")[1]
    for call in (lambda: client.get_model_metadata("other"), lambda: client.is_model_ready(NAME, "99")):
        with pytest.raises(InferenceServerException) as err:
            call()
        assert err.value.status() == "StatusCode.NOT_FOUND", err.value


@pytest.mark.parametrize("batch", [1, 17])
def test_infer_equals_onnxruntime_and_http(server: Server, version: str, reference, batch: int) -> None:
    x = images(batch, seed=batch).astype(np.float32) / 255
    expected = reference.run(None, {"input": x})[0]
    client = grpcclient.InferenceServerClient(server.grpc)
    result = client.infer(NAME, [grpc_input("input", x, "FP32")], model_version=version, request_id=f"req-{batch}")
    np.testing.assert_allclose(result.as_numpy("logits"), expected, atol=1e-6, rtol=0)
    assert (result.as_numpy("logits") == http_answer(server, [("input", x, "FP32")])).all()  # the same batcher, the same numbers
    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == (f"req-{batch}", NAME, version)
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [("logits", "FP32", [batch, 10])]
    # Classification names the classes, as over HTTP.
    top = client.infer(NAME, [grpc_input("input", x, "FP32")], outputs=[grpcclient.InferRequestedOutput("logits", class_count=3)])
    assert (top.as_numpy("logits") == http_answer(server, [("input", x, "FP32")], class_count=3)).all()
    assert [int(item.split(b":")[1]) for item in top.as_numpy("logits")[:, 0]] == list(expected.argmax(1))


def test_png_files_give_what_they_give_over_http(server: Server, reference) -> None:
    """BYTES `image` over gRPC: the files as bytes (never base64), prepared as in training."""
    from champion.ingest.decode import decode

    x = images(3, seed=7)
    big = np.random.default_rng(1).integers(0, 256, (40, 56), dtype=np.uint8)  # resized to 28x28
    files = np.array([png(a[0]) for a in x] + [png(big)], dtype=np.object_)
    prepared = np.stack([decode(io.BytesIO(f), (28, 28), 1)[0] for f in files]).astype(np.float32) / 255
    expected = reference.run(None, {"input": prepared})[0]
    client = grpcclient.InferenceServerClient(server.grpc)
    got = client.infer(NAME, [grpc_input("image", files, "BYTES")]).as_numpy("logits")
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    assert (got == http_answer(server, [("image", files, "BYTES")])).all()


def stub(server: Server) -> Any:
    import grpc

    return service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.grpc))


def typed(name: str, datatype: str, shape: list[int], **contents: Any) -> Any:
    tensor = service_pb2.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
    for field, values in contents.items():
        getattr(tensor.contents, field).extend(values)
    return tensor


def test_typed_contents_give_what_raw_contents_give(server: Server, reference) -> None:
    """`contents.fp32_contents` and `contents.bytes_contents`, which tritonclient never sends, read as raw ones."""
    x = images(2, seed=5)
    floats = x.astype(np.float32) / 255
    request = service_pb2.ModelInferRequest(model_name=NAME, id="typed", inputs=[typed("input", "FP32", [2, 1, 28, 28], fp32_contents=floats.ravel().tolist())])
    response = stub(server).ModelInfer(request, timeout=30)
    assert response.id == "typed" and [o.name for o in response.outputs] == ["logits"] and len(response.raw_output_contents) == 1
    got = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(2, 10)
    np.testing.assert_allclose(got, reference.run(None, {"input": floats})[0], atol=1e-6, rtol=0)
    files = [png(a[0]) for a in x]
    request = service_pb2.ModelInferRequest(model_name=NAME, inputs=[typed("image", "BYTES", [2], bytes_contents=files)])
    from_files = np.frombuffer(stub(server).ModelInfer(request, timeout=30).raw_output_contents[0], np.float32).reshape(2, 10)
    assert (from_files == got).all()


def _bad_requests() -> list[tuple[str, Any, str, str]]:
    """(label, ModelInferRequest, gRPC status, part of the message)."""
    x = np.zeros((2, 1, 28, 28), np.float32)
    raw = x.tobytes()

    def req(*inputs: Any, raw_contents: list[bytes] | None = None, model: str = NAME, **kw: Any) -> Any:
        return service_pb2.ModelInferRequest(model_name=model, inputs=list(inputs), raw_input_contents=raw_contents or [], **kw)

    def tensor(name: str = "input", datatype: str = "FP32", shape: tuple[int, ...] = (2, 1, 28, 28)) -> Any:
        return service_pb2.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=list(shape))

    nan = x.copy()
    nan[0, 0, 0, 0] = np.nan
    out = service_pb2.ModelInferRequest.InferRequestedOutputTensor
    return [
        ("unknown model", req(tensor(), raw_contents=[raw], model="other"), "NOT_FOUND", "unknown model 'other'"),
        ("unknown version", req(tensor(), raw_contents=[raw], model_version="99"), "NOT_FOUND", "no version '99'"),
        ("unknown input", req(tensor("pixels"), raw_contents=[raw]), "INVALID_ARGUMENT", "unknown input"),
        ("wrong shape", req(tensor(shape=(2, 1, 8, 8)), raw_contents=[raw[: 2 * 64 * 4]]), "INVALID_ARGUMENT", "shape"),
        ("wrong datatype", req(tensor(datatype="INT32"), raw_contents=[raw]), "INVALID_ARGUMENT", "is FP32, not INT32"),
        ("unknown datatype", req(tensor(datatype="FP8"), raw_contents=[raw]), "INVALID_ARGUMENT", "unknown datatype"),
        ("raw size disagreeing with the shape", req(tensor(), raw_contents=[raw[:-4]]), "INVALID_ARGUMENT", "raw_input_contents is"),
        ("raw contents for no input", req(tensor(), raw_contents=[raw, raw]), "INVALID_ARGUMENT", "one per input"),
        ("NaN", req(tensor(), raw_contents=[nan.tobytes()]), "INVALID_ARGUMENT", "NaN"),
        ("typed NaN", req(typed("input", "FP32", [2, 1, 28, 28], fp32_contents=nan.ravel().tolist())), "INVALID_ARGUMENT", "NaN"),
        ("typed values in the wrong field", req(typed("input", "FP32", [2, 1, 28, 28], int_contents=[0] * x.size)), "INVALID_ARGUMENT", "fp32_contents"),
        ("too few typed values", req(typed("input", "FP32", [2, 1, 28, 28], fp32_contents=[0.0] * 10)), "INVALID_ARGUMENT", "needs 1568 elements"),
        ("no inputs", req(), "INVALID_ARGUMENT", "no inputs"),
        ("batch over --max-batch-size", req(tensor(shape=(65, 1, 28, 28)), raw_contents=[bytes(65 * 784 * 4)]), "INVALID_ARGUMENT", "max-batch-size"),
        ("unknown output", req(tensor(), raw_contents=[raw], outputs=[out(name="probs")]), "INVALID_ARGUMENT", "unknown output"),
        ("undecodable image", req(typed("image", "BYTES", [1], bytes_contents=[b"not a png"])), "INVALID_ARGUMENT", "not a readable image"),
        ("BYTES elements over the batch", req(tensor("image", "BYTES", (1_000_000,)), raw_contents=[b""]), "INVALID_ARGUMENT", "BYTES elements"),
        ("message over --max-request-bytes", req(tensor(shape=(400, 1, 28, 28)), raw_contents=[bytes(400 * 784 * 4)]), "RESOURCE_EXHAUSTED", "larger than max"),
        ("elements over --max-elements", req(tensor(shape=(30000, 1, 28, 28)), raw_contents=[b""]), "RESOURCE_EXHAUSTED", "max-elements"),
        ("typed values past what the model takes", req(typed("input", "FP32", [1, 1, 28, 28], fp32_contents=[0.0] * 60_000)), "RESOURCE_EXHAUSTED", "contents hold more than"),
    ]  # fmt: skip


@pytest.mark.parametrize("label,request_,status,message", _bad_requests(), ids=[c[0] for c in _bad_requests()])
def test_bad_requests_get_their_status_and_the_server_stays_up(server: Server, label, request_, status, message) -> None:
    import grpc

    with pytest.raises(grpc.RpcError) as err:
        stub(server).ModelInfer(request_, timeout=30)
    assert err.value.code().name == status and message in err.value.details(), (err.value.code(), err.value.details())
    assert grpcclient.InferenceServerClient(server.grpc).is_server_ready()
    assert get(server.url + "/v2/health/ready")[0] == 200


def test_both_protocols_share_the_metrics_and_the_batches(server: Server, reference) -> None:
    requests_before = metric(server, "champion_serve_requests_total")
    errors_before = metric(server, "champion_serve_errors_total")
    runs_before = metric(server, "champion_serve_batch_size_count")
    n = 24
    inputs = [images(1 + i % 3, seed=200 + i).astype(np.float32) / 255 for i in range(n)]
    results: list[Any] = [None] * n
    barrier = threading.Barrier(n)

    def call(i: int) -> None:
        if i % 2:
            client = grpcclient.InferenceServerClient(server.grpc)
            barrier.wait()
            results[i] = client.infer(NAME, [grpc_input("input", inputs[i], "FP32")]).as_numpy("logits")
        else:
            barrier.wait()
            results[i] = http_answer(server, [("input", inputs[i], "FP32")])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for x, got in zip(inputs, results):
        np.testing.assert_allclose(got, reference.run(None, {"input": x})[0], atol=1e-6, rtol=0)
    runs = metric(server, "champion_serve_batch_size_count") - runs_before
    assert 1 <= runs < n, f"{n} simultaneous requests over both protocols took {runs} ONNX Runtime runs: no batching"
    with pytest.raises(InferenceServerException):
        grpcclient.InferenceServerClient(server.grpc).infer(NAME, [grpc_input("input", np.zeros((1, 1, 8, 8), np.float32), "FP32")])
    assert metric(server, "champion_serve_requests_total") - requests_before == n + 1
    assert metric(server, "champion_serve_errors_total") - errors_before == 1


def test_sigterm_finishes_the_grpc_call_in_flight_and_exits_0(version: str, reference) -> None:
    """SIGTERM while a call's 64 large images are being decoded: the call is answered, then exit 0."""
    from champion.ingest.decode import decode

    srv = start("--model-name", f"{NAME}-onnx", "--version", version, "--max-request-bytes", str(256 * 1024**2), "--quiet")
    noise = png(np.random.default_rng(3).integers(0, 256, (1200, 1200), dtype=np.uint8), level=1)  # 1.4 MB, ~5 ms to decode
    files = np.array([noise] * 64, dtype=np.object_)
    answer: dict[str, Any] = {}

    def call() -> None:
        try:
            answer["logits"] = grpcclient.InferenceServerClient(srv.grpc).infer(NAME, [grpc_input("image", files, "BYTES")], client_timeout=60).as_numpy("logits")
        except InferenceServerException as exc:
            answer["error"] = exc

    try:
        before = metric(srv, "champion_serve_requests_total")
        client = threading.Thread(target=call)
        client.start()
        deadline = time.perf_counter() + 30
        while metric(srv, "champion_serve_requests_total") == before and time.perf_counter() < deadline:
            time.sleep(0.005)  # counted as it starts: it is being prepared now
        srv.proc.send_signal(signal.SIGTERM)
        signalled = time.perf_counter()
        assert "logits" not in answer and "error" not in answer, "answered before SIGTERM: not a call in flight"
        client.join(60)
        print(f"\nthe call in flight was answered {time.perf_counter() - signalled:.2f} s after SIGTERM")
        code = srv.proc.wait(60)  # one SIGTERM: a second, after the server restored the default handler, would kill it
    finally:
        srv.stop()  # nothing left to stop, unless a step above failed
    assert code == 0, srv.proc.stderr.read()
    assert "logits" in answer, answer
    first = decode(io.BytesIO(files[0]), (28, 28), 1)[0].astype(np.float32)[None] / 255
    np.testing.assert_allclose(answer["logits"][:1], reference.run(None, {"input": first})[0], atol=1e-6, rtol=0)


def test_not_ready_is_unavailable(shipped: Shipped) -> None:
    """The service before its lifespan has run: live, not ready, calls refused with UNAVAILABLE. In this
    process, beside tritonclient.grpc's copy of the protocol (champion's messages have a pool of their own)."""
    from champion.deploy import grpc_service, serve

    service = serve.build_app(serve.load_model()).state.service  # never started: never ready
    started, stop = threading.Event(), threading.Event()
    door = grpc_service.GrpcServer(service, "127.0.0.1", 0)

    async def main() -> None:
        await door.start()
        started.set()
        while not stop.is_set():
            await asyncio.sleep(0.02)
        await door.stop()

    thread = threading.Thread(target=asyncio.run, args=(main(),))
    thread.start()
    try:
        assert started.wait(30)
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{door.port}")
        assert client.is_server_live() and not client.is_server_ready() and not client.is_model_ready(NAME)
        with pytest.raises(InferenceServerException) as err:
            client.infer(NAME, [grpc_input("input", np.zeros((1, 1, 28, 28), np.float32), "FP32")])
        assert err.value.status() == "StatusCode.UNAVAILABLE" and "not ready" in err.value.message()
    finally:
        stop.set()
        thread.join(60)


def test_a_busy_grpc_port_is_one_line_and_exit_1(shipped: Shipped) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "champion", "serve", "--quiet", "--port", str(free_port()), "--grpc-port", str(port)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot listen on 127.0.0.1:") and str(port) in lines[0], done.stderr
    assert "--grpc-port" in lines[0]


def test_serving_http_alone_imports_no_grpc(shipped: Shipped) -> None:
    code = (
        "import sys\n"
        "import champion.cli\n"
        "from champion.deploy import serve\n"
        "app = serve.build_app(serve.load_model())\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'grpc' or m.startswith('champion.deploy.proto')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_grpc_options_are_checked_before_the_model_loads(shipped: Shipped) -> None:
    same = subprocess.run([sys.executable, "-m", "champion", "serve", "--port", "8123", "--grpc-port", "8123"], capture_output=True, text=True, timeout=120)
    assert same.returncode == 2 and "gRPC needs a port of its own" in same.stderr, same.stderr
    # Without the extra: one line naming it. (grpc made unimportable, as where champion[grpc] is not installed.)
    code = "import sys; sys.modules['grpc'] = None; sys.argv = ['champion', 'serve', '--grpc-port', '8001']; from champion.cli import main; main()"
    missing = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "pip install 'champion[grpc]'" in missing.stderr, missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1, missing.stderr
