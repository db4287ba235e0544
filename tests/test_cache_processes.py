"""The cache under real processes: two concurrent `champion data prepare`, a SIGKILL mid-ingestion,
and the data commands."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow


def make_jpegs(root: Path, per_class: int, size: int = 256) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("a", "b", "c"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.linspace(0, 255, size, dtype=np.float32)[None, :, None] * rng.random(3, dtype=np.float32)
            noise = rng.normal(0, 20, (size, size, 3)).astype(np.float32)
            Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(root / cls / f"{i}.jpg", quality=90)
    return root


def prepare(root: Path, cache: Path) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("champion")
    args = [str(exe), "data", "prepare", "--quiet", "--set", f"data.source={root}", "--set", f"data.cache_dir={cache}",
            "--set", "data.channels=3", "--set", "data.image_size=[32,32]"]  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))


def entries(cache: Path) -> tuple[list[Path], list[Path]]:
    complete = [p for p in cache.iterdir() if (p / "manifest.json").is_file()] if cache.exists() else []
    temporary = [p for p in cache.iterdir() if p.name.startswith(".tmp-")] if cache.exists() else []
    return complete, temporary


def test_two_concurrent_prepares_end_with_one_valid_entry(tmp_path: Path) -> None:
    root = make_jpegs(tmp_path / "imgs", 60)
    cache = tmp_path / "cache"
    procs = [prepare(root, cache) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    digests = {line for out, _ in outs for line in out.splitlines() if line.startswith("DATA_DIGEST=")}
    assert len(digests) == 1
    complete, temporary = entries(cache)
    assert len(complete) == 1 and not temporary
    from champion.ingest import load_entry

    data = load_entry(complete[0])
    assert data.images.shape == (180, 3, 32, 32)


def test_sigkill_during_ingestion_leaves_nothing_taken_as_complete(tmp_path: Path) -> None:
    """Killed at several moments (imports, hashing, decoding, writing), ingestion never leaves a
    partial entry under a final name; a rerun then completes."""
    root = make_jpegs(tmp_path / "imgs", 150, size=400)
    # The moments are fractions of a whole run's time, measured first into another cache: a fixed
    # schedule stops testing anything once the command gets faster than it (it finished before the
    # first kill once scikit-learn left its imports).
    started = time.monotonic()
    whole = prepare(root, tmp_path / "measure")
    assert whole.wait(timeout=300) == 0
    took = time.monotonic() - started
    cache = tmp_path / "cache"
    killed_while_running = 0
    for delay in (0.25 * took, 0.4 * took, 0.55 * took, 0.7 * took, 0.85 * took):
        proc = prepare(root, cache)
        time.sleep(delay)
        killed_while_running += proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        complete, _ = entries(cache)
        for entry in complete:  # whatever is under a final name is whole
            assert len(np.load(entry / "labels.npy")) == 450
            assert np.load(entry / "images.npy", mmap_mode="r").shape == (450, 3, 32, 32)
        if complete:
            break
    assert killed_while_running >= 1
    again = prepare(root, cache)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    complete, _ = entries(cache)
    assert len(complete) == 1


def test_data_commands(tmp_path: Path, cli) -> None:
    root = make_jpegs(tmp_path / "imgs", 4, size=40)
    opts = ["--set", f"data.source={root}", "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "data.validation_split=0.25"]
    prepared = cli("data", "prepare", "--quiet", *opts)
    assert prepared.exit_code == 0, prepared.stderr
    assert prepared.values["TRAIN_SIZE"] == "9" and prepared.values["VAL_SIZE"] == "3"
    inspected = cli("data", "inspect", *opts)
    assert inspected.exit_code == 0 and prepared.values["DATA_DIGEST"] in inspected.stdout
    assert cli("data", "clear", "nope", *opts).exit_code == 1
    cleared = cli("data", "clear", prepared.values["DATA_DIGEST"], *opts)
    assert cleared.exit_code == 0 and not (tmp_path / "cache" / prepared.values["DATA_DIGEST"]).exists()
