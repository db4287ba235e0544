"""A training process keeps freed memory for its next step instead of faulting it in afresh."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's (Linux)"
)

# Six 8 MiB blocks made, written and freed, 20 times over, in a fresh interpreter: the pattern of a
# training step's activations. Prints the page faults per round after the first.
_ROUNDS = """
import resource, sys
import numpy as np
if sys.argv[1] == "keep":
    from champion.train.allocator import keep_freed_memory
    assert keep_freed_memory()
def round_():
    blocks = [np.ones(1 << 20) for _ in range(6)]  # 8 MiB each, every page written
    del blocks
round_()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    round_()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def _faults_per_round(mode: str) -> float:
    done = subprocess.run([sys.executable, "-c", _ROUNDS, mode], capture_output=True, text=True, check=True)
    return float(done.stdout)


def test_freed_blocks_are_reused_without_page_faults() -> None:
    pages = 6 * (8 << 20) // 4096
    # glibc's defaults trim what was freed beyond 16 MiB back to the OS and fault it in again next
    # round (about a quarter of the pages here)...
    assert _faults_per_round("default") > pages / 8
    # ...which a training process no longer does.
    assert _faults_per_round("keep") < pages / 100
