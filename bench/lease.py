"""What the lease costs a promotion: requests and time of one uncontended hold with two fenced moves.

Gate 1 holds the lease once and checks it before each of its two alias moves (`champion`,
`previous_champion`), so one cycle here is `hold` (ticket, queue read, final renewal), two `check`s
and the release. Measured on a local SQLite store and through `mlflow server` (SQLite backend, its
uvicorn access log counting the requests), in this process, after one warm-up cycle.

    .venv/bin/python bench/lease.py [--cycles 20]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def cycles(n: int) -> tuple[float, float]:
    """Median wall and CPU milliseconds of n hold/check/check/release cycles."""
    from champion.registry import lease

    walls, cpus = [], []
    for i in range(n + 1):
        t, c = time.perf_counter(), time.process_time()
        with lease.hold("bench", "bench cycle") as held:
            held.check()
            held.check()
        if i:  # the first one creates the lease's model
            walls.append((time.perf_counter() - t) * 1000)
            cpus.append((time.process_time() - c) * 1000)
    return statistics.median(walls), statistics.median(cpus)


def requests(log: Path) -> int:
    return len(re.findall(r'"(GET|POST|PATCH|PUT|DELETE) /api/', log.read_text(errors="replace")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20)
    args = parser.parse_args()
    import mlflow

    with tempfile.TemporaryDirectory(prefix="bench-lease-") as tmp:
        root = Path(tmp)
        mlflow.set_tracking_uri(f"sqlite:///{root / 'local.db'}")
        wall, cpu = cycles(args.cycles)
        print(f"local SQLite: {wall:.1f} ms per promotion's lease (median of {args.cycles}), {cpu:.1f} ms CPU")

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log = root / "server.log"
        with open(log, "wb") as out:
            server = subprocess.Popen(
                [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
                 "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            while True:
                try:
                    urllib.request.urlopen(f"{url}/health", timeout=2).close()
                    break
                except OSError:
                    time.sleep(0.3)
            mlflow.set_tracking_uri(url)
            before = requests(log)
            wall, cpu = cycles(args.cycles)
            time.sleep(1)  # the access log is written after the answer
            per = (requests(log) - before) / (args.cycles + 1)
            print(f"mlflow server: {wall:.1f} ms per promotion's lease (median of {args.cycles}), {cpu:.1f} ms CPU, {per:.2f} requests")
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
