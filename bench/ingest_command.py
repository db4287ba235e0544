"""Run `champion data prepare` as a command and measure it: wall time and peak resident memory.

Not a benchmark itself: `ingest_images.py` and `ingest_scale.py` use it. Peak memory is sampled
from /proc/<pid>/status (VmHWM, the high-water mark of resident memory) of the command and of each
of its decoding workers while they run; the rusage of a child would not do, for a child forked
from a big parent starts with the parent's peak.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

CHAMPION = Path(sys.executable).parent / "champion"


def _hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def prepare(folder: Path, cache: Path, size: int, channels: int = 3) -> Run:
    """Run `champion data prepare` on `folder` into `cache` (which should be empty) and measure it."""
    cmd = [
        str(CHAMPION), "data", "prepare", "--quiet",
        "--set", f"data.source={folder}", "--set", f"data.cache_dir={cache}",
        "--set", f"data.image_size=[{size},{size}]", "--set", f"data.channels={channels}",
    ]  # fmt: skip
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        main_peak, worker_peak = 0, 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # reaped here: its rusage counts its workers
            if pid:
                break
            main_peak = max(main_peak, _hwm_kib(proc.pid))
            for child in _children(proc.pid):
                worker_peak = max(worker_peak, _hwm_kib(child))
            time.sleep(0.02)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"champion data prepare failed ({proc.returncode}):\n{err.read()}")
        values = dict(line.split("=", 1) for line in out.read().splitlines() if "=" in line)
    return Run(wall, usage.ru_utime + usage.ru_stime, main_peak / 1024, worker_peak / 1024, values)


@dataclass
class Run:
    wall_s: float
    cpu_s: float  # user + system, the command and its decoding workers
    peak_mib: float  # the command's process
    worker_peak_mib: float  # its largest worker (forked: counts the pages it shares with the command)
    values: dict[str, str]  # the KEY=VALUE lines it printed


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
