"""Benchmark: `champion serve` under hostile requests: status, peak memory and health latency per case.

Usage: .venv/bin/python bench/hostile.py [--store DIR]

Trains the default digits model into a temporary folder (or reuses `--store`, a folder whose
mlflow.db already holds `digits-cnn-onnx@deploy`), starts `champion serve` on a free loopback port,
and sends each hostile request of issue #19 once, alone. While a case runs, a thread asks
`/v2/health/live` every 10 ms and samples the server's RSS from /proc. Prints, per case: the status
code, the peak RSS above the idle server's, and the longest health-check latency during the case.
The targets: no 500, peak RSS within 200 MB of idle, health within 100 ms throughout.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

BIN = Path(sys.executable).parent
NAME = "digits-cnn"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def cases() -> list[tuple[str, bytes, dict[str, str]]]:
    """(label, body, headers): the request cases issue #19 found, each sent once."""
    js = lambda doc: json.dumps(doc).encode()  # noqa: E731
    strip = base64.b64encode(png(np.zeros((1, 3_000_000), np.uint8))).decode()
    n = 10_000_000  # BYTES elements declared; each takes 4 bytes of length prefix in the binary form
    header = js({"inputs": [{"name": "image", "shape": [n], "datatype": "BYTES", "parameters": {"binary_data_size": 4 * n}}]})
    numbers = b'{"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [' + b"0," * 30_000_000 + b"0]}]}"
    return [
        ("3 KB PNG of 3,000,000 x 1 pixels", js({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [strip]}]}), {}),
        ("60 MB binary body declaring 10 M BYTES", header + bytes(4 * n) + bytes(20 * 1024**2), {"Inference-Header-Content-Length": str(len(header))}),
        ("60 MB JSON body of numbers", numbers, {}),
        ("JSON nested 100,000 deep", b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", {}),
        ("shape [0, 2**62, 2**62]", js({"inputs": [{"name": "input", "shape": [0, 2**62, 2**62], "datatype": "FP32", "data": []}]}), {}),
    ]


def watch(port: int, pid: int, stop: threading.Event, out: dict[str, float]) -> None:
    """Health latency and RSS, sampled every 10 ms until `stop`."""
    while not stop.is_set():
        started = time.perf_counter()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/v2/health/live")
            conn.getresponse().read()
            conn.close()
        except OSError:
            pass
        out["health_ms"] = max(out["health_ms"], (time.perf_counter() - started) * 1000)
        out["rss_mb"] = max(out["rss_mb"], rss_mb(pid))
        time.sleep(0.01)


def send(port: int, body: bytes, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request("POST", f"/v2/models/{NAME}/infer", body, {"Content-Type": "application/json", **headers})
        return conn.getresponse().status
    except OSError as exc:
        print(f"  connection: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 0
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="a folder whose mlflow.db holds digits-cnn-onnx@deploy")
    args = parser.parse_args()
    store = args.store or Path(tempfile.mkdtemp(prefix="champion-hostile-"))
    if not (store / "mlflow.db").exists():
        subprocess.run([str(BIN / "champion"), "run", "--quiet", "--epochs", "1"], cwd=store, check=True, stdout=subprocess.DEVNULL)
    port = free_port()
    server = subprocess.Popen([str(BIN / "champion"), "serve", "--quiet", "--port", str(port)], cwd=store)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/v2/health/ready")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("champion serve did not become ready") from None
            time.sleep(0.1)
        time.sleep(1)
        idle = rss_mb(server.pid)
        print(f"champion serve idle RSS: {idle:.0f} MB")
        print(f"{'case':42} {'status':>6} {'peak RSS over idle':>19} {'longest health check':>21}")
        for label, body, headers in cases():
            seen = {"health_ms": 0.0, "rss_mb": 0.0}
            stop = threading.Event()
            watcher = threading.Thread(target=watch, args=(port, server.pid, stop, seen))
            watcher.start()
            status = send(port, body, headers)
            time.sleep(0.2)  # what the request left behind is part of its cost
            stop.set()
            watcher.join()
            print(f"{label:42} {status:>6} {seen['rss_mb'] - idle:>16.0f} MB {seen['health_ms']:>18.1f} ms")
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
