"""Benchmark: the default `champion run` against MLflow's basic-auth server, and on local SQLite, in the same run.

Usage: .venv/bin/python bench/auth_server.py [--repeat N] [--ttl SECONDS] [--workers N]

Runs `champion run` with the shipped default config (digits, mnist_cnn, 10 epochs) in a fresh
folder (its own data cache) three ways, one after the other, `--repeat` times:

- local: no MLFLOW_TRACKING_URI, the default `sqlite:///mlflow.db`;
- basic-auth, MLflow's defaults: `mlflow server --app-name basic-auth` with `auth_cache_ttl_seconds = 0`,
  which verifies the password hash on every request;
- basic-auth, recommended: the same server with `auth_cache_ttl_seconds = --ttl` (60), as
  docs/authentication.md recommends.

Each server is fresh for each run (SQLite backend, proxied artefacts, MLflow's 4 workers unless
`--workers`; MLflow's job runner off, as it only adds start-up time) and started before the clock
starts. The run acts as a non-admin user with EDIT on what it writes (tests/auth_servers.py
`provision`). Prints, per run, the wall time, the CPU time of the champion process and of the server's
processes, and the number of requests the server received; then, per mode, the median over the rounds
of its ratio to the local run of the same round. Client and server
share the machine's cores.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the server helpers the tests use

from auth_servers import auth_server, provision  # noqa: E402

warnings.filterwarnings("ignore", message="starlette.middleware.wsgi is deprecated")  # imported by MLflow's auth client

CHAMPION = str(Path(sys.executable).with_name("champion"))
USER, PASSWORD = "bench", "bench-password-0123"
NAME = "digits-cnn"  # the default config's model.name
GOAL = 1.5


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system, reaped children included) of every live process in group `pgid`."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[2]) == pgid:  # fields after the name: state, ppid, pgrp, ...
            total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return total / tick


def run_champion(folder: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of `champion run --quiet` in `folder` (fails loudly when the run does)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([CHAMPION, "run", "--quiet"], cwd=folder, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"champion run failed in {folder} (exit {done.returncode}):\n{done.stderr[-3000:]}")
    if "GATE2_RESULT=passed" not in done.stdout:
        sys.exit(f"champion run in {folder} did not reach a deployed model:\n{done.stdout}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def clean_env(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CHAMPION_")) and k != "AM_SC_API_KEY"}
    env["XDG_CACHE_HOME"] = str(folder / "cache")
    return env


def local(tmp: Path, i: int) -> dict[str, float]:
    folder = tmp / f"local-{i}"
    folder.mkdir()
    wall, cpu = run_champion(folder, clean_env(folder))
    return {"wall": wall, "cpu": cpu, "server_cpu": 0.0, "requests": 0}


def against_server(tmp: Path, i: int, ttl: int, workers: int | None) -> dict[str, float]:
    folder = tmp / f"auth-ttl{ttl}-{i}"
    folder.mkdir()
    with auth_server(tmp / f"server-ttl{ttl}-{i}", cache_ttl_s=ttl, workers=workers) as server:
        provision(server.url, USER, PASSWORD, (NAME,))
        server.forget_requests()
        env = clean_env(folder) | {"MLFLOW_TRACKING_URI": server.url, "MLFLOW_TRACKING_USERNAME": USER,
                                   "MLFLOW_TRACKING_PASSWORD": PASSWORD}  # fmt: skip
        pgid = server.server.proc.pid  # the server runs in its own session: its pid is the group id
        server_before = group_cpu_s(pgid)
        wall, cpu = run_champion(folder, env)
        server_cpu = group_cpu_s(pgid) - server_before
        requests = len(server.requests_received())
    return {"wall": wall, "cpu": cpu, "server_cpu": server_cpu, "requests": requests}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1, help="rounds of the three runs (medians are reported)")
    parser.add_argument("--ttl", type=int, default=60, help="auth_cache_ttl_seconds of the recommended server")
    parser.add_argument("--workers", type=int, default=None, help="server workers (default: MLflow's, 4)")
    args = parser.parse_args()

    modes = {
        "local SQLite": lambda tmp, i: local(tmp, i),
        "basic-auth, MLflow defaults (auth_cache_ttl_seconds = 0)": lambda tmp, i: against_server(tmp, i, 0, args.workers),
        f"basic-auth, recommended (auth_cache_ttl_seconds = {args.ttl})": lambda tmp, i: against_server(
            tmp, i, args.ttl, args.workers
        ),
    }
    results: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="bench-auth-") as tmp_name:
        tmp = Path(tmp_name)
        for i in range(args.repeat):
            for mode, measure in modes.items():
                r = measure(tmp, i)
                results[mode].append(r)
                print(
                    f"round {i + 1}  {mode}: {r['wall']:.1f} s wall, champion CPU {r['cpu']:.1f} s, "
                    f"server CPU {r['server_cpu']:.1f} s, {r['requests']} requests",
                    flush=True,
                )

    # Ratios within each round (the runs of a round are minutes apart; the machine's load drifts).
    local_runs = results["local SQLite"]
    print()
    for mode, rs in results.items():
        wall = statistics.median(r / l["wall"] for r, l in zip((r["wall"] for r in rs), local_runs))
        cpu = statistics.median((r["cpu"] + r["server_cpu"]) / l["cpu"] for r, l in zip(rs, local_runs))
        print(f"{mode}: {wall:.2f}x local wall time, {cpu:.2f}x its CPU time (champion + server)")
    recommended = statistics.median(r["wall"] / l["wall"] for r, l in zip(results[list(modes)[2]], local_runs))
    verdict = "met" if recommended <= GOAL else "NOT met"
    print(f"recommended basic-auth server / local: {recommended:.2f}x (goal <= {GOAL}x): {verdict}")

if __name__ == "__main__":
    main()
