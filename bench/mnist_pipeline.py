"""Benchmark: `champion run` on MNIST from an empty cache and an empty MLflow store, against the
plain PyTorch reference (../shared/bench/reference_mnist.py) measured in the same run.

Usage: .venv/bin/python bench/mnist_pipeline.py [--mnist DIR] [--reference-epochs N] [--seeds 0,1,2] [--set KEY=VALUE]

1. `champion run --config configs/mnist.yaml` in a fresh folder (a plain folder, not a git
   checkout: champion's source digest names the code): wall time from process start to exit and the process's CPU time,
   test_accuracy on the canonical 10k test split, and every stage's time and share, read from the
   stage timings the pipeline writes (`CHAMPION_TIMINGS`, see champion.timings): start-up and
   imports, ingest, each epoch, evaluation, logging, Gate 1, export, Gate 2, model card.
2. The same command again: nothing changed, so the identical training is reused, not repeated,
   and Gate 1 rejects it (exit 3). The line the first run printed about reuse (why it trained) and
   the second's (what it reused) are shown.
3. `champion train` with each other seed of --seeds: test accuracy of the recipe per seed.
4. The reference until its first epoch at or above 0.99 test accuracy, for at most --reference-epochs
   epochs (default 6: it shuffles unseeded, and reached 99% in its third epoch in some runs, not in
   others); its time to 99% is from process start to that epoch's line.

Runs one after the other, never at once. CPU times are user + system of the child process: compare
them when the machine is busy, since wall time then mostly measures the other processes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CONFIG = ROOT / "configs" / "mnist.yaml"


@dataclass
class Timed:
    wall: float
    cpu: float
    code: int
    stdout: str
    stderr: str
    started: float  # time.time() at launch
    lines: list[tuple[float, str]] = field(default_factory=list)  # (seconds since launch, stdout line)

    @property
    def values(self) -> dict[str, str]:
        return dict(line.split("=", 1) for line in self.stdout.splitlines() if "=" in line and line.split("=")[0].isupper())


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(
    cmd: list[str], cwd: Path, env: dict[str, str] | None = None, ok: tuple[int, ...] = (0,),
    stop_after: Callable[[str], bool] | None = None,
) -> Timed:  # fmt: skip
    """Run `cmd` to its end, or until `stop_after` is true of a stdout line; lines are time-stamped as they arrive."""
    cpu0, started, t0 = children_cpu(), time.time(), time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    assert proc.stdout is not None and proc.stderr is not None
    for line in proc.stdout:
        lines.append((time.perf_counter() - t0, line.rstrip("\n")))
        if stop_after is not None and stop_after(line):
            proc.terminate()  # what was to be timed has happened
            ok = (*ok, -signal.SIGTERM)
            break
    stderr = proc.stderr.read()
    code = proc.wait()
    result = Timed(time.perf_counter() - t0, children_cpu() - cpu0, code, "\n".join(l for _, l in lines), stderr, started, lines)
    if code not in ok:
        sys.exit(f"{' '.join(cmd)} exited {code} (expected {ok}):\n{result.stdout}\n{stderr}")
    return result


def stage_table(run: Timed, timings_file: Path) -> list[tuple[str, float, float | None, int]]:
    """(stage, wall seconds, CPU seconds, depth) from launch to exit: every second is in one row.

    Top-level rows partition the process's life: start-up (interpreter, CLI, config, until the
    first stage), the recorded stages, the gaps between them ("between stages"), and the exit
    after the timings were written. Stages inside another (epochs inside fit) are listed under it
    at depth 1, with what the parent spent outside them. Stages of a child process that ran at the
    same time (`beside`: the data and the store of a first run, while it imports) are listed after
    the partition, marked ||: their seconds overlap the stages above.
    """
    report = json.loads(timings_file.read_text())
    stages = sorted(report["stages"], key=lambda s: (s["start"], -s["end"]))
    beside = [s for s in stages if s.get("beside")]  # in a child process at the same time: not in the partition
    stages = [s for s in stages if not s.get("beside")]
    top: list[dict] = []
    children: dict[int, list[dict]] = {}
    for s in stages:
        parent = next((i for i, t in enumerate(top) if t["start"] <= s["start"] and s["end"] <= t["end"]), None)
        if parent is None:
            top.append(s)
        else:
            children.setdefault(parent, []).append(s)
    rows: list[tuple[str, float, float | None, int]] = []
    rows.append(("start-up: interpreter, CLI, config", top[0]["start"] - run.started, None, 0))
    gaps = 0.0
    for i, s in enumerate(top):
        if i:
            gaps += max(0.0, s["start"] - top[i - 1]["end"])
        rows.append((s["stage"], s["end"] - s["start"], s.get("cpu"), 0))
        kids = children.get(i, [])
        for k in kids:
            rows.append((k["stage"], k["end"] - k["start"], k.get("cpu"), 1))
        if kids:
            outside = (s["end"] - s["start"]) - sum(k["end"] - k["start"] for k in kids)
            rows.append((f"{s['stage']}: outside the above", outside, None, 1))
    for s in beside:
        rows.append((f"|| {s['stage']}", s["end"] - s["start"], s.get("cpu"), 1))
    gaps += max(0.0, report["written_at"] - top[-1]["end"])
    rows.append(("between stages", gaps, None, 0))
    rows.append(("exit (after the last stage)", run.started + run.wall - report["written_at"], None, 0))
    return rows


def print_stages(title: str, run: Timed, timings_file: Path) -> None:
    print(f"\n{title}: {run.wall:.2f} s wall, {run.cpu:.2f} s CPU (user+sys)")
    if not timings_file.is_file():  # a champion from before champion.timings (PYTHONPATH=old/src)
        print("  (no stage timings: this champion does not write CHAMPION_TIMINGS)")
        return
    print(f"  {'stage':44s} {'wall s':>8s} {'share':>7s} {'CPU s':>7s}")
    for name, wall, cpu, depth in stage_table(run, timings_file):
        label = ("  " * depth + name)[:44]
        share = f"{100 * wall / run.wall:6.1f}%"
        print(f"  {label:44s} {wall:8.2f} {share:>7s} {'' if cpu is None else f'{cpu:7.2f}':>7s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", type=Path, default=SHARED / "data" / "mnist", help="folder with the four IDX files")
    parser.add_argument("--reference-epochs", type=int, default=6, help="most epochs of the reference; it stops at 99%% (0: skip it)")
    parser.add_argument("--seeds", default="0,1,2", help="seeds whose test accuracy is reported (the first is timed)")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="extra --set for champion (repeatable)")
    args = parser.parse_args()
    mnist = args.mnist.resolve()
    reference = SHARED / "bench" / "reference_mnist.py"
    if not (mnist / "train-images-idx3-ubyte.gz").is_file() or not reference.is_file():
        sys.exit(f"needs {mnist} (MNIST IDX files) and {reference}")
    champion = Path(sys.executable).with_name("champion")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    accuracies: dict[int, float] = {}

    with tempfile.TemporaryDirectory(prefix="bench-champion-") as tmp:
        # A plain folder, as a user's: no git checkout is needed to recognise the second run as identical.
        work = Path(tmp)
        sets = [f"data.source={mnist}", f"data.cache_dir={work / 'cache'}", f"training.seed={seeds[0]}", *args.sets]
        cmd = [str(champion), "run", "--config", str(args.config), "--quiet", *(x for s in sets for x in ("--set", s))]
        first = timed(cmd, work, {"CHAMPION_TIMINGS": str(work / "timings-1.json")})
        again = timed(cmd, work, {"CHAMPION_TIMINGS": str(work / "timings-2.json")}, ok=(3,))
        if "identical training found" not in again.stderr:
            print(f"note: the second run trained again (no identical training found):\n{again.stderr[-2000:]}")
        for label, result in (("first run", first), ("run again", again)):
            said = [line for line in result.stderr.splitlines() if "identical training" in line or "reusing" in line]
            print(f"{label} said: {said[0] if said else '(nothing about reuse)'}")

        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{work / 'mlflow.db'}")
        client = mlflow.MlflowClient()
        run = client.get_run(first.values["RUN_ID"])
        metrics = run.data.metrics
        epochs = len(client.get_metric_history(first.values["RUN_ID"], "epoch_time"))
        accuracies[seeds[0]] = metrics["test_accuracy"]
        reused = client.get_run(again.values["RUN_ID"]).data.tags.get("reused_run_id")
        print_stages("champion run (empty cache and store)", first, work / "timings-1.json")
        print_stages("champion run again (nothing changed)", again, work / "timings-2.json")
        for seed in seeds[1:]:
            sets = [f"data.source={mnist}", f"data.cache_dir={work / 'cache'}", f"training.seed={seed}", *args.sets]
            other = timed([str(champion), "train", "--config", str(args.config), "--quiet", *(x for s in sets for x in ("--set", s))], work)
            accuracies[seed] = client.get_run(other.values["RUN_ID"]).data.metrics["test_accuracy"]

    ref = None
    if args.reference_epochs > 0:
        with tempfile.TemporaryDirectory(prefix="bench-reference-") as tmp:
            ref = timed(
                [sys.executable, str(reference), str(mnist), str(args.reference_epochs)], Path(tmp),
                stop_after=lambda line: bool(m := re.match(r"epoch \d+ acc ([0-9.]+)", line)) and float(m.group(1)) >= 0.99,
            )  # fmt: skip
        epochs_seen = [(t, float(m.group(1))) for t, line in ref.lines if (m := re.match(r"epoch \d+ acc ([0-9.]+)", line))]
        to_99 = next((t for t, acc in epochs_seen if acc >= 0.99), None)

    print()
    print(f"champion run: {first.wall:.1f} s wall, {first.cpu:.1f} s CPU; result {first.values.get('RESULT')}, "
          f"gate 2 {first.values.get('GATE2_RESULT')}, {epochs} epoch(s), test_accuracy {metrics['test_accuracy']:.4f}, "
          f"best_val_accuracy {metrics['best_val_accuracy']:.4f}")
    print(f"champion run again: {again.wall:.2f} s wall, {again.cpu:.2f} s CPU; exit {again.code}, RESULT "
          f"{again.values.get('RESULT')}, reused run {reused or 'none (trained again)'}")
    print("test_accuracy by seed: " + ", ".join(f"{s}: {a:.4f}" for s, a in accuracies.items())
          + f" (min {min(accuracies.values()):.4f})")
    if ref is not None:
        final = epochs_seen[-1][1] if epochs_seen else float("nan")
        print(f"reference_mnist.py, {len(epochs_seen)} epoch(s): {ref.wall:.1f} s wall, {ref.cpu:.1f} s CPU, "
              f"accuracy by epoch {', '.join(f'{a:.4f}' for _, a in epochs_seen)} (final {final:.4f})")
        if to_99 is None:
            print("reference did not reach 0.99: no time-to-99% ratio (give more --reference-epochs)")
        else:
            print(f"reference time to 99%: {to_99:.1f} s wall (process start to the epoch line)")
            print(f"ratio reference time-to-99% / champion run wall: {to_99 / first.wall:.2f}x; "
                  f"whole-process CPU ratio {ref.cpu / first.cpu:.2f}x (the reference's process, stopped at 99%)")


if __name__ == "__main__":
    main()
