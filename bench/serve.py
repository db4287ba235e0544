"""Benchmark: `champion serve` against Triton Inference Server and `mlflow models serve` on the MNIST model, in one run.

Usage: .venv/bin/python bench/serve.py [--mnist DIR] [--store DIR] [--requests N] [--clients 1,8,32]
           [--no-grpc] [--no-triton] [--triton-wheel WHL] [--plot [PNG]]

Trains the MNIST recipe (configs/mnist.yaml) into a temporary folder, or reuses `--store` (a folder
holding mlflow.db, trained there before: the model is trained into it when it has none). Then starts,
one after the other on free loopback ports, `champion serve`, a real Triton Inference Server, and
`mlflow models serve -m models:/mnist-cnn-onnx@deploy --env-manager local`, and sends each batch-1
requests (one MNIST test image each) from 1, 8 and 32 concurrent clients: threads with one keep-alive
http.client connection each. champion and Triton speak the same Open Inference Protocol (KServe v2),
so they get the very same bodies from the same client code: JSON, the binary tensor form, and gRPC
(tritonclient.grpc, one client and channel per thread, raw tensor contents); mlflow gets the same
images as `{"inputs": ...}` JSON. Prints requests/s, p50 and p99 latency, the ratios champion/Triton
and champion/mlflow, and each server's time from process start to ready; `--plot` also draws
requests/s against clients for every server and form into a PNG (docs/serve_throughput.png when no
path is given).

Triton is the `tritonserver` of the nvidia-pytriton wheel (fetched with `pip download` and unpacked
under the temp folder, beside a venv of its own for the python backend; see bench/triton_peer.py).
That wheel carries the python backend only, so Triton serves the same verified ONNX file with the
same ONNX Runtime version inside a python-backend model (bench/triton_model.py), batched by Triton's
dynamic batcher as `champion deploy triton` configures it.
When Triton cannot run here the bench says why and goes on without it (`--no-triton` skips it).

The clients share the machine with the server (2 cores here): the figures are of the pair.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import triton_peer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
NAME = "mnist-cnn"  # configs/mnist.yaml's model.name
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(store: Path, mnist: Path) -> None:
    if (store / "mlflow.db").is_file():
        return
    store.mkdir(parents=True, exist_ok=True)
    out = subprocess.run([
        str(BIN / "champion"), "run", "--config", str(ROOT / "configs" / "mnist.yaml"), "--quiet",
        "--set", f"data.source={mnist}", "--set", f"data.cache_dir={store / 'cache'}",
    ], cwd=store, capture_output=True, text=True)  # fmt: skip
    if out.returncode != 0:
        sys.exit(f"champion run failed with exit code {out.returncode}:\n{out.stdout}\n{out.stderr}")


def test_images(mnist: Path, n: int) -> np.ndarray:
    with gzip.open(mnist / "t10k-images-idx3-ubyte.gz") as f:
        data = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    return data[:n].astype(np.float32) / 255  # what training fed the graph


@dataclass
class Server:
    label: str
    proc: subprocess.Popen
    port: int
    ready_s: float
    log: Any  # the file its stderr goes to (a pipe left unread could fill and stall the server)

    def stop(self) -> int:
        # Own process group: mlflow's server runs uvicorn in a child process.
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        code = self.proc.wait()
        self.log.close()
        return code


def start(label: str, cmd: list[str], port: int, ready_path: str, cwd: Path, env: dict[str, str]) -> Server:
    log = tempfile.TemporaryFile("w+")
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True, start_new_session=True)
    server = Server(label, proc, port, 0.0, log)
    while time.perf_counter() - started < 180:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"{label} exited {proc.returncode}: {log.read()[-3000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", ready_path)
            if conn.getresponse().status == 200:
                server.ready_s = time.perf_counter() - started
                conn.close()
                return server
        except OSError:
            pass
        time.sleep(0.02)
    server.stop()
    raise RuntimeError(f"{label} was not ready in 180 s")


@dataclass
class Protocol:
    label: str
    path: str
    bodies: list[tuple[bytes, dict[str, str]]]  # one per image
    logits: Callable[[bytes, Any], np.ndarray]  # response body and headers -> the 10 scores


def oip_json(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    body = {"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": x.ravel().tolist()}]}
    return json.dumps(body).encode(), {"Content-Type": "application/json"}


def oip_binary(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    raw = x.astype(np.float32).tobytes()
    header = json.dumps({
        "inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "parameters": {"binary_data_size": len(raw)}}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
    }).encode()  # fmt: skip
    return header + raw, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}


def mlflow_json(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    return json.dumps({"inputs": {"input": x.reshape(1, 1, 28, 28).tolist()}}).encode(), {"Content-Type": "application/json"}


def logits_oip_json(raw: bytes, headers) -> np.ndarray:
    return np.array(json.loads(raw)["outputs"][0]["data"], np.float32)


def logits_oip_binary(raw: bytes, headers) -> np.ndarray:
    n = int(headers["Inference-Header-Content-Length"])
    return np.frombuffer(raw[n:], np.float32)


def logits_mlflow(raw: bytes, headers) -> np.ndarray:
    out = json.loads(raw)["predictions"]
    if isinstance(out, dict):
        out = next(iter(out.values()))
    return np.array(out, np.float32).ravel()


def load(port: int, proto: Protocol, clients: int, requests: int) -> tuple[float, np.ndarray]:
    """`requests` requests from `clients` threads, each on its own keep-alive connection."""
    per = requests // clients
    latencies = np.zeros((clients, per))
    failures: list[str] = []
    barrier = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        barrier.wait()
        for i in range(per):
            body, headers = proto.bodies[(c * per + i) % len(proto.bodies)]
            t = time.perf_counter()
            conn.request("POST", proto.path, body, headers)
            resp = conn.getresponse()
            resp.read()
            latencies[c, i] = time.perf_counter() - t
            if resp.status != 200:
                failures.append(f"{resp.status}")
        conn.close()

    wall = drive(client, clients, barrier)
    if failures:
        raise RuntimeError(f"{proto.label}: {len(failures)} requests failed (status {failures[0]})")
    return clients * per / wall, latencies.ravel()


def load_grpc(label: str, address: str, x: np.ndarray, clients: int, requests: int) -> tuple[float, np.ndarray]:
    """`requests` batch-1 ModelInfer calls from `clients` threads, each with its own tritonclient.grpc client."""
    import tritonclient.grpc as grpcclient

    per = requests // clients
    latencies = np.zeros((clients, per))
    failures: list[str] = []
    barrier = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        conn = grpcclient.InferenceServerClient(address)
        inputs = []
        for i in range(per):
            inp = grpcclient.InferInput("input", [1, 1, 28, 28], "FP32")
            inp.set_data_from_numpy(x[(c * per + i) % len(x)][None])
            inputs.append(inp)
        barrier.wait()
        for i in range(per):
            t = time.perf_counter()
            try:
                conn.infer(NAME, [inputs[i]]).as_numpy("logits")
            except Exception as exc:  # noqa: BLE001 - counted and reported below
                failures.append(str(exc))
            latencies[c, i] = time.perf_counter() - t
        conn.close()

    wall = drive(client, clients, barrier)
    if failures:
        raise RuntimeError(f"{label}: {len(failures)} calls failed ({failures[0]})")
    return clients * per / wall, latencies.ravel()


def drive(client: Callable[[int], None], clients: int, barrier: threading.Barrier) -> float:
    """Run `client(c)` on `clients` threads that meet at `barrier` once set up; the seconds from there to the last one's end."""
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def check_grpc(address: str, x: np.ndarray, expected: np.ndarray) -> None:
    """The first few gRPC answers match ONNX Runtime run directly."""
    import tritonclient.grpc as grpcclient

    conn = grpcclient.InferenceServerClient(address)
    for i in range(4):
        inp = grpcclient.InferInput("input", [1, 1, 28, 28], "FP32")
        inp.set_data_from_numpy(x[i][None])
        np.testing.assert_allclose(conn.infer(NAME, [inp]).as_numpy("logits")[0], expected[i], atol=1e-4, rtol=0)
    conn.close()


def grpc_available() -> bool:
    try:
        import grpc  # noqa: F401 - champion[grpc]
        import tritonclient.grpc  # noqa: F401 - tritonclient[grpc], in the test extra
    except ImportError:
        return False
    return True


def check(port: int, proto: Protocol, x: np.ndarray, expected: np.ndarray) -> None:
    """The first few answers match ONNX Runtime run directly: both servers compute the same thing."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for i in range(4):
        body, headers = proto.bodies[i]
        conn.request("POST", proto.path, body, headers)
        resp = conn.getresponse()
        raw = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{proto.label}: status {resp.status}: {raw[:500]!r}")
        np.testing.assert_allclose(proto.logits(raw, resp.headers), expected[i], atol=1e-4, rtol=0)
    conn.close()


def deployed_model(store: Path, dest: Path) -> tuple[Path, list[str]]:
    """The ONNX file `champion serve` loads (`<name>-onnx@deploy`, verified against its export record) and its files."""
    os.chdir(store)
    from champion.registry import tracking
    from champion.registry import exports

    tracking.setup_tracking()
    mv = exports.deployable(f"{NAME}-onnx", tracking.DEPLOY_ALIAS, None)
    graph, _, _, files = exports.verified_graph(mv, dest)
    return graph, files


def reference_logits(graph: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def plot(results: dict[tuple[str, int], tuple[float, float, float]], counts: list[int], path: Path, title: str) -> None:
    """Requests/s against clients, one line per server and form: champion solid, Triton dashed, mlflow dotted."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    colours = {"JSON": "tab:blue", "binary": "tab:orange", "gRPC": "tab:green"}
    styles = {"champion": ("-", "o"), "Triton": ("--", "s"), "mlflow": (":", "^")}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label in dict.fromkeys(label for label, _ in results):
        server, form = label.split(" ", 1)
        xs = [c for c in counts if (label, c) in results]
        line, marker = styles[server]
        colour = "tab:red" if server == "mlflow" else colours[form]
        ax.plot(xs, [results[label, c][0] for c in xs], linestyle=line, marker=marker, color=colour, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(counts, [str(c) for c in counts])
    ax.set_xlabel("concurrent clients (one keep-alive connection each)")
    ax.set_ylabel("requests/s (batch 1)")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", type=Path, default=SHARED / "data" / "mnist", help="folder with the four IDX files")
    parser.add_argument("--store", type=Path, help="folder to train into, or holding mlflow.db from an earlier run (reused)")
    parser.add_argument("--requests", type=int, default=3200, help="requests per server, form and client count")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--no-grpc", action="store_true", help="skip the gRPC cases (champion's and Triton's)")
    parser.add_argument("--no-triton", action="store_true", help="skip Triton Inference Server")
    parser.add_argument("--triton-wheel", type=Path, help=f"a local {triton_peer.PACKAGE} {triton_peer.VERSION} wheel (default: pip download it)")
    parser.add_argument("--plot", type=Path, nargs="?", const=ROOT / "docs" / "serve_throughput.png",
                        help="write requests/s against clients as a PNG here (docs/serve_throughput.png when no path is given)")  # fmt: skip
    args = parser.parse_args()
    mnist = args.mnist.resolve()
    if not (mnist / "t10k-images-idx3-ubyte.gz").is_file():
        sys.exit(f"needs {mnist} (MNIST IDX files)")
    # Resolved now: the registry look-up below runs from the store folder.
    plot_path = args.plot.resolve() if args.plot else None
    wheel = args.triton_wheel.resolve() if args.triton_wheel else None
    counts = [int(c) for c in args.clients.split(",")]
    tmp = None if args.store else tempfile.TemporaryDirectory(prefix="bench-serve-")
    store = (args.store or Path(tmp.name)).resolve()
    scratch = tempfile.TemporaryDirectory(prefix="bench-serve-work-")
    work = Path(scratch.name)
    t = time.perf_counter()
    train(store, mnist)
    print(f"model: {NAME}-onnx@deploy in {store} ({time.perf_counter() - t:.1f} s to train or find)")

    x = test_images(mnist, 256)
    graph, graph_files = deployed_model(store, work / "registry")
    expected = reference_logits(graph, x)
    # mlflow models serve execs `uvicorn` by name: the venv's bin first on PATH, as when it is activated.
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    infer = f"/v2/models/{NAME}/infer"
    # champion and Triton speak the same protocol: the very same bodies go to both.
    json_bodies, binary_bodies = [oip_json(i) for i in x], [oip_binary(i) for i in x]
    protocols = {
        "champion JSON": Protocol("champion JSON", infer, json_bodies, logits_oip_json),
        "champion binary": Protocol("champion binary", infer, binary_bodies, logits_oip_binary),
        "Triton JSON": Protocol("Triton JSON", infer, json_bodies, logits_oip_json),
        "Triton binary": Protocol("Triton binary", infer, binary_bodies, logits_oip_binary),
        "mlflow JSON": Protocol("mlflow JSON", "/invocations", [mlflow_json(i) for i in x], logits_mlflow),
    }
    results: dict[tuple[str, int], tuple[float, float, float]] = {}
    ready: dict[str, float | str] = {}

    def record(label: str, clients: int, rps: float, lat: np.ndarray) -> None:
        results[label, clients] = (rps, float(np.percentile(lat, 50)) * 1000, float(np.percentile(lat, 99)) * 1000)
        print(f"  {label:16} {clients:3} clients: {rps:7.0f} req/s  p50 {results[label, clients][1]:6.2f} ms  p99 {results[label, clients][2]:6.2f} ms", flush=True)

    def measure(server: Server, labels: list[str]) -> None:
        for label in labels:
            proto = protocols[label]
            check(server.port, proto, x, expected)
            load(server.port, proto, 8, 400)  # warm-up: connections, first batches
            for clients in counts:
                record(label, clients, *load(server.port, proto, clients, args.requests))

    def measure_grpc(label: str, address: str) -> None:
        check_grpc(address, x, expected)
        load_grpc(label, address, x, 8, 400)  # warm-up: channels, first batches
        for clients in counts:
            record(label, clients, *load_grpc(label, address, x, clients, args.requests))

    use_grpc = not args.no_grpc and grpc_available()
    if not args.no_grpc and not use_grpc:
        print("gRPC: skipped (needs champion[grpc] and tritonclient[grpc]: pip install -e '.[test]')")
    port, grpc_port = free_port(), free_port()
    server = start("champion serve", [str(BIN / "champion"), "serve", "--model-name", NAME, "--port", str(port), "--quiet",
                                      *(["--grpc-port", str(grpc_port)] if use_grpc else [])],
                   port, "/v2/health/ready", store, env)  # fmt: skip
    ready["champion"] = server.ready_s
    print(f"champion serve: ready {server.ready_s:.2f} s after start")
    try:
        measure(server, ["champion JSON", "champion binary"])
        if use_grpc:
            measure_grpc("champion gRPC", f"127.0.0.1:{grpc_port}")
    finally:
        code = server.stop()
    print(f"champion serve: exit {code} on SIGTERM")

    def run_triton() -> str | float:
        """Triton's figures into `results`; its ready time, or why it was not measured."""
        try:
            tserver = triton_peer.install(wheel)
            venv, holds = triton_peer.python_env()
        except (triton_peer.Unavailable, OSError) as exc:
            return f"skipped: {exc}"
        print(f"Triton: {tserver} (backends in the wheel: {', '.join(triton_peer.backends(tserver))}): "
              f"the python backend running {holds} ({venv}) on the same ONNX file")  # fmt: skip
        repo = work / "triton-models"
        triton_peer.write_repository(repo, NAME, graph, graph_files)
        port, grpc_port = free_port(), free_port()
        cmd = triton_peer.command(tserver, repo, port, grpc_port)
        print(f"Triton: {' '.join(cmd)}")
        try:
            server = start("tritonserver", cmd, port, "/v2/health/ready", store, triton_peer.environment(env, venv))
        except RuntimeError as exc:
            return f"skipped: could not start: {exc}"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/v2")
        meta = json.loads(conn.getresponse().read())
        conn.close()
        print(f"Triton {meta.get('version')}: ready {server.ready_s:.2f} s after start")
        try:
            measure(server, ["Triton JSON", "Triton binary"])
            if use_grpc:
                measure_grpc("Triton gRPC", f"127.0.0.1:{grpc_port}")
        finally:
            code = server.stop()
        print(f"Triton: exit {code} on SIGTERM")
        return server.ready_s

    ready["Triton"] = "skipped (--no-triton)" if args.no_triton else run_triton()
    if isinstance(ready["Triton"], str):
        print(f"Triton: {ready['Triton']}")

    port = free_port()
    mlflow_cmd = [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{NAME}-onnx@deploy", "--env-manager", "local",
                  "--port", str(port), "--host", "127.0.0.1"]  # fmt: skip
    try:
        server = start("mlflow models serve", mlflow_cmd, port, "/ping", store, env)
    except RuntimeError as exc:
        ready["mlflow"] = f"could not start: {exc}"
        print(f"mlflow models serve: {ready['mlflow']}")
        server = None
    if server is not None:
        ready["mlflow"] = server.ready_s
        print(f"mlflow models serve: ready {server.ready_s:.2f} s after start")
        try:
            measure(server, ["mlflow JSON"])
        finally:
            server.stop()

    print(f"\nsummary (batch-1 requests, {args.requests} per row; champion and Triton got the same bodies from the same client)")
    print("ready after start: " + ", ".join(f"{k} {v:.2f} s" if isinstance(v, float) else f"{k} {v.split(':')[0]}" + (" (see above)" if ":" in v else "") for k, v in ready.items()))
    labels = list(dict.fromkeys(label for label, _ in results))  # in the order measured
    for clients in counts:
        print(f"{clients:3} clients:")
        for label in labels:
            if (label, clients) in results:
                rps, p50, p99 = results[label, clients]
                print(f"      {label:16} {rps:7.0f} req/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms")
        ratios = []
        for form in ("JSON", "binary", "gRPC"):
            c = results.get((f"champion {form}", clients))
            for peer in ("Triton", "mlflow"):
                # mlflow speaks JSON only: every champion form is set against its JSON.
                p = results.get((f"{peer} {'JSON' if peer == 'mlflow' else form}", clients))
                if c and p:
                    ratios.append(f"champion {form}/{peer}: {c[0] / p[0]:.2f}x req/s, p99 {c[2] / p[2]:.2f}x")
        for r in ratios:
            print(f"      {r}")
    if plot_path is not None:
        title = f"bench/serve.py: MNIST CNN, batch 1, {args.requests} requests a point, {os.cpu_count()} CPUs"
        plot(results, counts, plot_path, title)
        print(f"plot: {plot_path}")
    scratch.cleanup()
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
