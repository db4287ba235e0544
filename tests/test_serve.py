"""`champion serve`: the Open Inference Protocol over HTTP, checked against the spec and ONNX Runtime.

A real SQLite-backed MLflow with a model trained for one epoch on digits, the real server in its own
process on a free loopback port, real clients (tritonclient.http and plain HTTP), and the responses
validated against the schemas of the protocol's OpenAPI document in ../shared/specs.
"""

from __future__ import annotations

import base64
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

from conftest import ShipModel, Shipped, invoke
from servers import ServeProcess, start_serve

pytestmark = pytest.mark.slow
httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is in the test extra")

NAME = "srv-cnn"
SPEC = Path(__file__).resolve().parents[2] / "shared" / "specs" / "open_inference_rest.yaml"


@pytest.fixture(scope="module")
def shipped(shipped_model: ShipModel) -> Shipped:
    """`champion run` for 1 epoch on digits: srv-cnn-onnx v1 @deploy, the store's only -onnx model."""
    return shipped_model(NAME, "export.num_samples=20")


@pytest.fixture(scope="module")
def store(shipped: Shipped) -> Path:
    return shipped.root


@pytest.fixture(scope="module")
def version(shipped: Shipped) -> str:
    return shipped.onnx_version


Server = ServeProcess
start = start_serve


@pytest.fixture(scope="module")
def server(store: Path, version: str) -> Iterator[Server]:
    # No --model-name: the registry holds one -onnx model. A small body limit for the 413 test,
    # and a batching window wide enough that concurrent clients share ONNX Runtime runs.
    srv = start("--max-request-bytes", str(1024**2), "--max-delay-ms", "20", "--max-batch-size", "64")
    print(f"\nchampion serve: ready {srv.ready_s:.2f} s after the process started")
    yield srv
    srv.stop()


def request(url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def get(url: str) -> tuple[int, Any]:
    status, _, body = request(url)
    return status, json.loads(body)


def post_json(url: str, body: dict | bytes, **headers: str) -> tuple[int, Any]:
    status, _, raw = request(url, body if isinstance(body, bytes) else json.dumps(body).encode(), headers)
    return status, json.loads(raw)


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    import yaml

    return yaml.safe_load(SPEC.read_text())


def validate(doc: dict[str, Any], schema: str, body: Any) -> None:
    import jsonschema

    jsonschema.Draft202012Validator({**doc, "$ref": f"#/components/schemas/{schema}"}).validate(body)


def onnx_file(version: str) -> Path:
    import mlflow

    from champion.registry import tracking

    tracking.setup_tracking()
    source = tracking.client().get_model_version(f"{NAME}-onnx", version).source
    return Path(mlflow.get_logged_model(source.removeprefix("models:/")).artifact_location.removeprefix("file://")) / "model.onnx"


@pytest.fixture(scope="module")
def reference(store: Path, version: str):
    """The registered graph in a direct ONNX Runtime session, and its class names."""
    import onnxruntime as ort

    from champion.registry import tracking

    mv = tracking.client().get_model_version(f"{NAME}-onnx", version)
    meta = json.loads(tracking.read_artifact(mv.tags["run_id"], "metadata.json"))
    session = ort.InferenceSession(str(onnx_file(version)), providers=["CPUExecutionProvider"])
    return session, meta["preprocessing"]["classes"]


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)


def test_metadata_and_health_match_the_graph(server: Server, version: str, spec: dict, reference) -> None:
    import onnx

    status, body = get(server.url + "/v2")
    assert status == 200 and set(body["extensions"]) >= {"binary_tensor_data", "classification"}
    validate(spec, "metadata_server_response", body)
    assert get(server.url + "/v2/health/live")[0] == 200 and get(server.url + "/v2/health/ready")[0] == 200
    proto = onnx.load(str(onnx_file(version)))
    types = {onnx.TensorProto.FLOAT: "FP32"}

    def tensors(values) -> list[dict]:
        return [
            {"name": v.name, "datatype": types[v.type.tensor_type.elem_type],
             "shape": [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]}
            for v in values
        ]  # fmt: skip

    for path in (f"/v2/models/{NAME}", f"/v2/models/{NAME}/versions/{version}"):
        status, meta = get(server.url + path)
        assert status == 200, meta
        validate(spec, "metadata_model_response", meta)
        assert meta["name"] == NAME and meta["versions"] == [version] and meta["platform"] == "onnxruntime_onnx"
        assert meta["inputs"] == tensors(proto.graph.input) + [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
        assert meta["outputs"] == tensors(proto.graph.output)
        assert meta["inputs"][0]["shape"][0] == -1  # the batch axis
        assert get(server.url + path + "/ready")[0] == 200
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(NAME, version)


@pytest.mark.parametrize("batch", [1, 17])
def test_infer_equals_onnxruntime_binary_and_json(server: Server, version: str, spec: dict, reference, batch: int) -> None:
    session, _ = reference
    x = images(batch, seed=batch).astype(np.float32) / 255
    expected = session.run(None, {"input": x})[0]
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    for binary in (True, False):
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        result = client.infer(NAME, [inp], model_version=version, request_id=f"req-{batch}",
                              outputs=[httpclient.InferRequestedOutput("logits", binary_data=binary)])  # fmt: skip
        np.testing.assert_allclose(result.as_numpy("logits"), expected, atol=1e-6, rtol=0)
        response = result.get_response()
        assert response["id"] == f"req-{batch}" and response["model_name"] == NAME and response["model_version"] == version
        [out] = response["outputs"]
        assert ("data" in out) is not binary and out["shape"] == [batch, 10]
    # tritonclient's default: no outputs named, every output in binary.
    result = client.infer(NAME, [inp])
    np.testing.assert_allclose(result.as_numpy("logits"), expected, atol=1e-6, rtol=0)
    # Plain JSON, nested data, validated against the spec on the way in and out.
    body = {"id": "j", "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}]}
    validate(spec, "inference_request", body)
    status, answer = post_json(f"{server.url}/v2/models/{NAME}/infer", body)
    assert status == 200, answer
    validate(spec, "inference_response", answer)
    np.testing.assert_allclose(np.array(answer["outputs"][0]["data"], np.float32).reshape(batch, 10), expected, atol=1e-6, rtol=0)


def test_classification_returns_labels(server: Server, reference) -> None:
    session, classes = reference
    x = images(5, seed=3).astype(np.float32) / 255
    expected = session.run(None, {"input": x})[0]
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(NAME, [inp], outputs=[httpclient.InferRequestedOutput("logits", class_count=3)])
    top = result.as_numpy("logits")
    assert top.shape == (5, 3)
    for row, scores in zip(top, expected):
        parsed = [item.decode().split(":") for item in row]
        order = np.argsort(-scores)[:3]
        assert [int(i) for _, i, _ in parsed] == list(order)
        assert [label for _, _, label in parsed] == [classes[i] for i in order]
        np.testing.assert_allclose([float(s) for s, _, _ in parsed], scores[order], rtol=1e-5)


def png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_png_files_give_what_the_float_tensors_give(server: Server, reference) -> None:
    """Images are prepared by champion.decode with the registered preprocessing: the same numbers as
    tensors the client scaled itself, including an image that needs resizing and an RGB one."""
    from champion.ingest.decode import decode

    session, classes = reference
    x = images(4, seed=7)
    big = np.random.default_rng(1).integers(0, 256, (40, 56), dtype=np.uint8)  # resized to 28x28
    rgb = np.random.default_rng(2).integers(0, 256, (28, 28, 3), dtype=np.uint8)  # made greyscale
    files = [png(a[0]) for a in x] + [png(big), png(rgb)]
    prepared = np.stack([decode(io.BytesIO(f), (28, 28), 1)[0] for f in files]).astype(np.float32) / 255
    assert (prepared[:4] == x.astype(np.float32) / 255).all()
    expected = session.run(None, {"input": prepared})[0]
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    inp = httpclient.InferInput("image", [len(files)], "BYTES")
    inp.set_data_from_numpy(np.array(files, dtype=np.object_))
    result = client.infer(NAME, [inp], outputs=[httpclient.InferRequestedOutput("logits")])
    np.testing.assert_allclose(result.as_numpy("logits"), expected, atol=1e-6, rtol=0)
    # JSON carries the files as base64, and classification names the classes.
    body = {"inputs": [{"name": "image", "shape": [len(files)], "datatype": "BYTES", "data": [base64.b64encode(f).decode() for f in files]}],
            "outputs": [{"name": "logits", "parameters": {"classification": 1}}]}  # fmt: skip
    status, answer = post_json(f"{server.url}/v2/models/{NAME}/infer", body)
    assert status == 200, answer
    assert [s.split(":")[2] for s in answer["outputs"][0]["data"]] == [classes[i] for i in expected.argmax(1)]
    # The binary extension's header only says where the JSON ends: base64 in JSON is still base64.
    text = json.dumps(body).encode()
    status, with_header = post_json(f"{server.url}/v2/models/{NAME}/infer", text, **{"Inference-Header-Content-Length": str(len(text))})
    assert status == 200 and with_header["outputs"] == answer["outputs"], with_header


def binary_body(header: dict, payload: bytes) -> tuple[bytes, dict[str, str]]:
    text = json.dumps(header).encode()
    return text + payload, {"Inference-Header-Content-Length": str(len(text))}


def _bad_requests() -> list[tuple[str, bytes, dict[str, str], int, str]]:
    x = np.zeros((2, 1, 28, 28), np.float32)
    good = {"name": "input", "shape": [2, 1, 28, 28], "datatype": "FP32"}
    js = lambda inputs, **extra: json.dumps({"inputs": inputs, **extra}).encode()  # noqa: E731
    raw = x.tobytes()
    cases = [
        ("wrong input name", js([{**good, "name": "pixels", "data": x.ravel().tolist()}]), {}, 400, "unknown input"),
        ("wrong shape", js([{**good, "shape": [2, 1, 8, 8], "data": [0.0] * 128}]), {}, 400, "shape"),
        ("wrong datatype", js([{**good, "datatype": "INT64", "data": [0] * x.size}]), {}, 400, "FP32"),
        ("wrong data length", js([{**good, "data": [0.0] * (x.size - 1)}]), {}, 400, "elements"),
        ("strings as floats", js([{**good, "data": ["0"] * x.size}]), {}, 400, "not FP32"),
        ("NaN", js([{**good, "data": [float("nan")] + [0.0] * (x.size - 1)}]), {}, 400, "NaN"),
        ("inf", js([{**good, "data": [float("inf")] + [0.0] * (x.size - 1)}]), {}, 400, "NaN or infinite"),
        ("invalid JSON", b'{"inputs": [', {}, 400, "not valid JSON"),
        ("no inputs", b"{}", {}, 400, "inputs"),
        ("batch over the limit", js([{**good, "shape": [65, 1, 28, 28], "data": [0.0] * (65 * 784)}]), {}, 400, "max-batch-size"),
        ("undecodable image", js([{"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(b"not a png").decode()]}]), {}, 400, "not a readable image"),
        ("unknown output", js([{**good, "data": x.ravel().tolist()}], outputs=[{"name": "probs"}]), {}, 400, "unknown output"),
        ("body over the limit", b" " * (1024**2 + 10), {}, 413, "max-request-bytes"),
        ("elements over the limit", js([{**good, "shape": [30000, 1, 28, 28], "data": []}]), {}, 413, "max-elements"),
        # refused from its bytes before it is parsed: the parser would hold the GIL over millions of numbers
        ("400,000 JSON numbers for 784", b'{"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [' + b"0," * 400_000 + b"0]}]}", {}, 413, "JSON holds more than"),
        ("JSON nested 100,000 deep", b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", {}, 400, "nested too deeply"),
        ("an impossible shape", js([{**good, "shape": [0, 2**62, 2**62], "data": []}]), {}, 400, "axis longer"),
        ("BYTES elements over the batch", js([{"name": "image", "shape": [1_000_000], "datatype": "BYTES", "data": []}]), {}, 400, "BYTES elements"),
        # 3 KB that a resize before the crop would make gigapixels (the server's RSS went to 5 GB)
        ("a 3,000,000 x 1 strip", js([{"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(png(np.zeros((1, 3_000_000), np.uint8))).decode()]}]), {}, 400, "aspect ratio"),
    ]  # fmt: skip
    nan = x.copy()
    nan[0, 0, 0, 0] = np.nan
    for label, header, payload, expect in [
        ("byte size disagreeing with the shape", {**good, "parameters": {"binary_data_size": len(raw) - 4}}, raw[:-4], "takes"),
        ("truncated binary body", {**good, "parameters": {"binary_data_size": len(raw)}}, raw[:-100], "truncated"),
        ("binary NaN", {**good, "parameters": {"binary_data_size": len(raw)}}, nan.tobytes(), "NaN"),
    ]:
        body, headers = binary_body({"inputs": [header]}, payload)
        cases.append((label, body, headers, 400, expect))
    return cases


@pytest.mark.parametrize("label,body,headers,status,message", _bad_requests(), ids=[c[0] for c in _bad_requests()])
def test_bad_requests_get_a_json_error_and_the_server_stays_up(server: Server, spec: dict, label, body, headers, status, message) -> None:
    got, answer = post_json(f"{server.url}/v2/models/{NAME}/infer", body, **headers)
    assert got == status, answer
    assert set(answer) == {"error"} and message in answer["error"], answer
    validate(spec, "inference_error_response", answer)
    assert get(server.url + "/v2/health/ready")[0] == 200


def test_unknown_model_or_version_is_404(server: Server, version: str) -> None:
    body = json.dumps({"inputs": []}).encode()
    for path in ("/v2/models/other", f"/v2/models/{NAME}/versions/99", "/v2/models/other/ready", "/v2/nothing"):
        status, answer = get(server.url + path)
        assert status == 404 and "error" in answer, (path, answer)
    status, answer = post_json(f"{server.url}/v2/models/{NAME}/versions/99/infer", body)
    assert status == 404 and "no version '99'" in answer["error"]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


class KeepAlive:
    """One keep-alive connection; reopened if the server closes it (it may, after an error)."""

    def __init__(self, url: str):
        import http.client

        self.host, self.port = url.removeprefix("http://").split(":")
        self.factory = http.client.HTTPConnection
        self.conn = self.factory(self.host, int(self.port), timeout=30)

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        for attempt in (0, 1):
            try:
                self.conn.request("POST", path, body, {"Content-Type": "application/json", **headers})
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (ConnectionError, OSError):
                self.conn.close()
                self.conn = self.factory(self.host, int(self.port), timeout=30)
                if attempt:
                    raise
        raise AssertionError("unreachable")


def test_a_thousand_bad_requests_leave_the_server_answering_and_its_memory_flat(server: Server, reference) -> None:
    session, _ = reference
    path = f"/v2/models/{NAME}/infer"
    cases = [(path, body, headers, status, message) for _, body, headers, status, message in _bad_requests()]
    cases += [
        ("/v2/models/other/infer", b'{"inputs": []}', {}, 404, "unknown model"),
        (f"/v2/models/{NAME}/versions/99/infer", b'{"inputs": []}', {}, 404, "no version"),
    ]
    client = KeepAlive(server.url)
    pid = server.proc.pid
    before = rss_mib(pid)
    started = time.perf_counter()
    for i in range(1000):
        target, body, headers, status, message = cases[i % len(cases)]
        got, raw = client.post(target, body, headers)
        assert got == status and message in json.loads(raw)["error"], (i, got, raw[:200])
    elapsed = time.perf_counter() - started
    grown = rss_mib(pid) - before
    x = images(3, seed=11).astype(np.float32) / 255
    got, raw = client.post(path, json.dumps({"inputs": [{"name": "input", "shape": [3, 1, 28, 28], "datatype": "FP32", "data": x.ravel().tolist()}]}).encode(), {})
    assert got == 200, raw
    logits = np.array(json.loads(raw)["outputs"][0]["data"], np.float32).reshape(3, 10)
    np.testing.assert_allclose(logits, session.run(None, {"input": x})[0], atol=1e-6, rtol=0)
    print(f"\n1000 bad requests in {elapsed:.1f} s; server RSS {before:.0f} MiB -> {before + grown:.0f} MiB")
    assert grown < 200, f"the server's resident memory grew by {grown:.0f} MiB over 1000 bad requests"


def test_concurrent_clients_get_their_own_results_in_shared_batches(server: Server, reference) -> None:
    session, _ = reference
    n = 24
    inputs = [images(1 + i % 3, seed=100 + i).astype(np.float32) / 255 for i in range(n)]
    results: list[Any] = [None] * n
    barrier = threading.Barrier(n)

    def call(i: int) -> None:
        client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
        inp = httpclient.InferInput("input", list(inputs[i].shape), "FP32")
        inp.set_data_from_numpy(inputs[i])
        barrier.wait()
        results[i] = client.infer(NAME, [inp]).as_numpy("logits")

    before = metric(server, "champion_serve_batch_size_count")
    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for x, got in zip(inputs, results):
        np.testing.assert_allclose(got, session.run(None, {"input": x})[0], atol=1e-6, rtol=0)
    runs = metric(server, "champion_serve_batch_size_count") - before
    assert 1 <= runs < n, f"{n} simultaneous requests took {runs} ONNX Runtime runs: no batching"


def metric(server: Server, name: str) -> float:
    status, _, body = request(server.url + "/metrics")
    assert status == 200
    return sum(float(line.split()[-1]) for line in body.decode().splitlines() if line.startswith(name + " ") or line.startswith(name + "{"))


def test_metrics_count_requests_errors_and_latency(server: Server) -> None:
    requests_before = metric(server, "champion_serve_requests_total")
    errors_before = metric(server, "champion_serve_errors_total")
    latency_before = metric(server, "champion_serve_request_latency_seconds_count")
    post_json(f"{server.url}/v2/models/{NAME}/infer", b"{")
    x = np.zeros((1, 1, 28, 28), np.float32)
    ok, _ = post_json(f"{server.url}/v2/models/{NAME}/infer", {"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": x.ravel().tolist()}]})
    assert ok == 200
    assert metric(server, "champion_serve_requests_total") - requests_before == 2
    assert metric(server, "champion_serve_errors_total") - errors_before == 1
    assert metric(server, "champion_serve_request_latency_seconds_count") - latency_before == 2


def test_a_busy_port_is_one_line_and_exit_1(store: Path, version: str) -> None:
    # uvicorn's own bind failure was a traceback and SystemExit(3): Gate 1's rejection code.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "champion", "serve", "--quiet", "--port", str(port)], capture_output=True, text=True, timeout=120
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot listen on 127.0.0.1:") and str(port) in lines[0], done.stderr


def test_the_listening_socket_says_it_is_tcp() -> None:
    """asyncio turns Nagle off (TCP_NODELAY) only on sockets whose protocol is IPPROTO_TCP; with the
    default 0 every keep-alive response waited out the client's delayed ACK: 44 ms a request."""
    from champion.deploy.serve import _listen

    with _listen("127.0.0.1", 0) as sock:
        assert sock.proto == socket.IPPROTO_TCP


def test_serving_path_imports_no_torch(store: Path, version: str) -> None:
    code = (
        "import sys\n"
        "import champion.cli\n"
        "from champion.deploy import serve\n"
        "app = serve.build_app(serve.load_model())\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning', 'pytorch_lightning', 'torchvision')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_sigterm_finishes_the_request_in_flight_and_exits_0(store: Path, version: str, reference) -> None:
    """SIGTERM arrives while the request's body is still on its way: it is read, answered, then exit 0."""
    import http.client

    srv = start("--model-name", f"{NAME}-onnx", "--version", version)
    x = images(2).astype(np.float32) / 255
    body = json.dumps({"inputs": [{"name": "input", "shape": [2, 1, 28, 28], "datatype": "FP32", "data": x.ravel().tolist()}]}).encode()
    conn = http.client.HTTPConnection(*srv.url.removeprefix("http://").split(":"), timeout=30)
    try:
        conn.putrequest("POST", f"/v2/models/{NAME}/infer")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body[: len(body) // 2])
        time.sleep(0.3)
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert srv.proc.poll() is None, "exited with a request in flight"
        conn.send(body[len(body) // 2 :])
        resp = conn.getresponse()
        status, answer = resp.status, json.loads(resp.read())
    finally:
        conn.close()
        code = srv.stop()
    assert code == 0, srv.proc.stderr.read()
    assert status == 200 and answer["model_version"] == version, answer
    np.testing.assert_allclose(np.array(answer["outputs"][0]["data"], np.float32).reshape(2, 10), reference[0].run(None, {"input": x})[0], atol=1e-6, rtol=0)


def asgi(app, method: str, path: str, body: bytes = b"") -> tuple[int, Any]:
    """One request straight into the ASGI app, lifespan not run (so never ready)."""
    import asyncio

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": [],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}  # fmt: skip
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], json.loads(b"".join(m.get("body", b"") for m in sent[1:]))


def test_not_ready_is_503(store: Path, version: str) -> None:
    from champion.deploy import serve

    app = serve.build_app(serve.load_model())
    assert asgi(app, "GET", "/v2/health/live") == (200, {"live": True})
    assert asgi(app, "GET", "/v2/health/ready") == (503, {"ready": False})
    assert asgi(app, "GET", f"/v2/models/{NAME}/ready")[0] == 503
    status, answer = asgi(app, "POST", f"/v2/models/{NAME}/infer", b'{"inputs": []}')
    assert status == 503 and "not ready" in answer["error"]


def test_changed_model_file_refuses_to_start(store: Path, version: str) -> None:
    path = onnx_file(version)
    original = path.read_bytes()
    path.write_bytes(original + b"\0")  # still loads; no longer what was exported
    try:
        srv = start(expect_ready=False)
        code = srv.proc.wait(120)
    finally:
        path.write_bytes(original)
    err = srv.proc.stderr.read()
    assert code == 1 and "not the model that was exported" in err, err


def test_reload_and_sighup_follow_the_alias(store: Path, version: str) -> None:
    """Last in the module: it registers a new version, which moves @deploy. One server follows it on
    its own; the other only when sent SIGHUP, while a client keeps sending it requests."""
    srv = start("--reload-on-alias-change", "0.5")
    hup = start()
    x = np.zeros((1, 1, 28, 28), np.float32)
    one = {"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": x.ravel().tolist()}]}
    try:
        exported = invoke("export", "--model-name", NAME, "--quiet")
        assert exported.exit_code == 0, exported.stderr
        validated = invoke("validate", "--export-run-id", exported.values["EXPORT_RUN_ID"], "--quiet")
        assert validated.exit_code == 0, validated.stderr
        new = validated.values["MODEL_VERSION"]
        assert new != version
        deadline = time.perf_counter() + 30
        while get(f"{srv.url}/v2/models/{NAME}")[1]["versions"] != [new] and time.perf_counter() < deadline:
            time.sleep(0.2)
        assert get(f"{srv.url}/v2/models/{NAME}")[1]["versions"] == [new]
        assert get(f"{srv.url}/v2/models/{NAME}/versions/{version}")[0] == 404
        status, answer = post_json(f"{srv.url}/v2/models/{NAME}/infer", one)
        assert status == 200 and answer["model_version"] == new
        assert get(f"{hup.url}/v2/models/{NAME}")[1]["versions"] == [version]  # no timer: not yet
        seen: list[tuple[int, str]] = []
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                status, answer = post_json(f"{hup.url}/v2/models/{NAME}/infer", one)
                seen.append((status, answer.get("model_version", answer.get("error"))))

        client = threading.Thread(target=hammer)
        client.start()
        time.sleep(0.3)
        hup.proc.send_signal(signal.SIGHUP)
        deadline = time.perf_counter() + 30
        while (not seen or seen[-1][1] != new) and time.perf_counter() < deadline:
            time.sleep(0.1)
        time.sleep(0.2)
        stop.set()
        client.join(30)
        assert {status for status, _ in seen} == {200}, [s for s in seen if s[0] != 200][:3]
        versions = [v for _, v in seen]
        switched = versions.index(new)  # every request before the switch on the old version, every one after on the new
        assert switched > 0 and set(versions[:switched]) == {version} and set(versions[switched:]) == {new}, versions
        assert get(f"{hup.url}/v2/models/{NAME}")[1]["versions"] == [new]
    finally:
        assert srv.stop() == 0
        assert hup.stop() == 0
