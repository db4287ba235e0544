"""Benchmark: the default `champion run` on local SQLite against the same run through a team's MLflow server.

Usage: .venv/bin/python bench/tracking_server.py [--repeats 3] [--workers N] [--keep DIR]

The team's server is the real thing on loopback: `mlflow server` with a PostgreSQL backend store
(the local PostgreSQL, a fresh database for every run) and `--artifacts-destination s3://...` on
moto's S3 server. Each timed run is `champion run --quiet` with the default config (digits,
mnist_cnn, 10 epochs) as a fresh process in a fresh working directory, so that it pays what a
user pays: interpreter start-up, imports, the data set from a warm cache (prepared once before,
for both), training, both gates, export, the model card. Local and server runs alternate, so that
load from other processes on the machine falls on both; the ratio is of the medians, measured in
this one invocation. For the server runs it also counts the requests the server received (its
access log) by endpoint, the CPU time the run cost on the server side (the server's process group,
moto's threads in this process, the PostgreSQL backends of its database) beside the client's, and
the stages champion timed (`CHAMPION_TIMINGS`). The server runs as docs/production.md recommends,
with MLflow's job runner off (`MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`; `--jobs` keeps it): idle, it
takes CPU from the training that shares the cores here. Each fresh server is warmed first (a few artefact
uploads and searches on new connections), as a team's long-running server is: a worker's first S3
upload costs seconds.

Needs PostgreSQL on 127.0.0.1:5432 where user postgres may create databases (CHAMPION_TEST_PGHOST,
CHAMPION_TEST_PGPORT, CHAMPION_TEST_PGUSER name another), and moto[server], psycopg2-binary, boto3.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the loopback servers the tests use: one way to start them

import servers  # noqa: E402

CHAMPION = str(Path(sys.executable).with_name("champion"))


def run_champion(workdir: Path, env: dict[str, str]) -> dict:
    """One `champion run --quiet` in `workdir`: wall and CPU seconds, exit code, stage timings."""
    workdir.mkdir(parents=True)
    timings = workdir / "timings.json"
    env = {**env, "CHAMPION_TIMINGS": str(timings)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run([CHAMPION, "run", "--quiet"], cwd=workdir, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"champion run failed in {workdir} (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    stages: dict[str, float] = {}
    if timings.is_file():
        for s in json.loads(timings.read_text())["stages"]:
            name = "epochs" if str(s["stage"]).startswith("epoch ") else str(s["stage"])
            stages[name] = stages.get(name, 0.0) + float(s["end"]) - float(s["start"])
    return {
        "wall": wall,
        "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "stages": stages,
        "stdout": proc.stdout,
    }


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a live process, from /proc (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _group_cpu(pgid: int) -> float:
    """CPU seconds of every live process in process group `pgid` (the server and its workers)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    total += _proc_cpu(int(entry.name))
            except OSError:
                continue
    return total


def _postgres_cpu(db: str) -> dict[int, float]:
    """CPU seconds of each PostgreSQL backend serving database `db` (the server's pooled connections)."""
    name = db.rsplit("/", 1)[1]
    pids = [pid for (pid,) in servers.query(db, "select pid from pg_stat_activity where datname = %s and pid <> pg_backend_pid()", name)]
    return {pid: _proc_cpu(pid) for pid in pids}


def base_env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAMPION_", "MLFLOW_"))}
    env["XDG_CACHE_HOME"] = str(cache)
    return env


def server_run(tmp: Path, i: int, endpoint: str, bucket: str, cache: Path, workers: int | None, jobs: bool) -> dict:
    """One run against a fresh server: new database, new artefact prefix (so Gate 1 sees no champion)."""
    log = tmp / f"server-{i}.log"
    with servers.postgres_database("champion_bench") as db:
        env = {**servers.s3_server_env(endpoint), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": str(jobs).lower()}
        server = servers.MlflowServer(db, f"s3://{bucket}/run-{i}", env=env, log=log, workers=workers)
        with server:
            warm_up(server.url)
            served = len(servers.access_log_requests(log))  # /health polls and the warm-up, before the run
            env = {**base_env(cache), "MLFLOW_TRACKING_URI": server.url}
            assert server.proc is not None
            server_cpu, pg_cpu = _group_cpu(server.proc.pid), _postgres_cpu(db)
            own = time.process_time()  # this process runs moto's S3 server (its threads), and waits
            result = run_champion(tmp / f"server-{i}", env)
            result["server_cpu"] = _group_cpu(server.proc.pid) - server_cpu
            result["s3_cpu"] = time.process_time() - own
            result["postgres_cpu"] = sum(cpu - pg_cpu.get(pid, 0.0) for pid, cpu in _postgres_cpu(db).items())
            result["total_cpu"] = result["cpu"] + result["server_cpu"] + result["s3_cpu"] + result["postgres_cpu"]
            time.sleep(0.5)  # the access log is written after the response
            requests = servers.access_log_requests(log)[served:]
        result["requests"] = Counter(f"{m} {p if 'mlflow-artifacts' not in p else _artifact_kind(p)}" for m, p in requests)
        result["rows"] = servers.query(db, "select count(*) from runs")[0][0]
    leftovers = [p.name for p in (tmp / f"server-{i}").iterdir() if p.name in ("mlflow.db", "mlruns", "mlartifacts")]
    if leftovers:
        sys.exit(f"the server run wrote {leftovers} into its working directory: it did not use the server")
    return result


def warm_up(url: str, connections: int = 12) -> None:
    """Make a freshly started server as warm as a team's long-running one: every worker has opened its
    database pool and its S3 client (its first S3 upload costs seconds) before the timed run.

    Each request is a new connection, so that they spread over the server's worker processes.
    """
    import urllib.request

    for i in range(connections):
        put = urllib.request.Request(f"{url}/api/2.0/mlflow-artifacts/artifacts/warm-up/{i}.txt", data=b"warm", method="PUT")
        with urllib.request.urlopen(put, timeout=60):
            pass
        with urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/search?max_results=1", timeout=60):
            pass


def _artifact_kind(path: str) -> str:
    parts = path.split("/")
    return "/".join(parts[:4]) + "/…"  # /api/2.0/mlflow-artifacts/{artifacts,presigned}/…


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each kind (default 3)")
    parser.add_argument("--workers", type=int, default=None, help="mlflow server --workers (default: mlflow's own, 4)")
    parser.add_argument(
        "--jobs", action="store_true",
        help="keep MLflow's job runner on (its default; it costs about 0.15 CPU-s per second while idle, taken from training here)",
    )  # fmt: skip
    parser.add_argument("--keep", type=Path, default=None, help="keep the working folders here (default: a temporary folder)")
    args = parser.parse_args()
    if reason := servers.postgres_unavailable():
        sys.exit(reason)

    tmp = Path(tempfile.mkdtemp(prefix="bench-tracking-server-")) if args.keep is None else args.keep.resolve()
    tmp.mkdir(parents=True, exist_ok=True)
    cache = tmp / "cache"
    prepared = subprocess.run([CHAMPION, "data", "prepare", "--quiet"], cwd=tmp, env=base_env(cache), capture_output=True, text=True)
    if prepared.returncode != 0:
        sys.exit(f"champion data prepare failed:\n{prepared.stderr[-2000:]}")

    import boto3

    local, remote = [], []
    os.environ.update(servers.AWS_TEST_ENV)
    try:
        with servers.moto_s3() as endpoint:
            bucket = f"mlflow-{uuid.uuid4().hex[:8]}"
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
            for i in range(args.repeats):
                local.append(run_champion(tmp / f"local-{i}", base_env(cache)))
                print(f"local  {i}: {local[-1]['wall']:6.2f} s wall, {local[-1]['cpu']:6.2f} s CPU", flush=True)
                remote.append(server_run(tmp, i, endpoint, bucket, cache, args.workers, args.jobs))
                r = remote[-1]
                print(f"server {i}: {r['wall']:6.2f} s wall, {r['cpu']:6.2f} s CPU + server {r['server_cpu']:.2f} + S3 "
                      f"{r['s3_cpu']:.2f} + PostgreSQL {r['postgres_cpu']:.2f} = {r['total_cpu']:.2f} s, "
                      f"{sum(r['requests'].values())} requests", flush=True)  # fmt: skip
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)

    def med(rows: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    print()
    print(f"default digits run, median of {args.repeats}: local SQLite {med(local, 'wall'):.2f} s "
          f"({med(local, 'cpu'):.2f} s CPU); mlflow server + PostgreSQL + S3 {med(remote, 'wall'):.2f} s "
          f"({med(remote, 'cpu'):.2f} s client CPU, {med(remote, 'total_cpu'):.2f} s with server, S3 and PostgreSQL): "
          f"{med(remote, 'wall') / med(local, 'wall'):.2f}x wall, {med(remote, 'total_cpu') / med(local, 'cpu'):.2f}x CPU")  # fmt: skip
    pairs = [r["wall"] / loc["wall"] for loc, r in zip(local, remote)]
    print(f"wall ratio of each round (server / local): {', '.join(f'{x:.2f}' for x in pairs)}")
    counts = [sum(r["requests"].values()) for r in remote]
    print(f"requests the server received per run: {counts}")
    print("\nstages (median s): stage, local, server, server - local")
    names = sorted({n for r in local + remote for n in r["stages"]}, key=lambda n: -statistics.median(r["stages"].get(n, 0) for r in remote))
    for n in names:
        a = statistics.median(r["stages"].get(n, 0.0) for r in local)
        b = statistics.median(r["stages"].get(n, 0.0) for r in remote)
        print(f"  {n:32s} {a:7.2f} {b:7.2f} {b - a:+7.2f}")
    print("\nrequests by endpoint (last server run):")
    for key, n in remote[-1]["requests"].most_common():
        print(f"  {n:4d}  {key}")


if __name__ == "__main__":
    main()
