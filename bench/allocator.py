"""Benchmark: one epoch of MNIST's model (configs/mnist.yaml) in a plain PyTorch loop, with glibc's
default allocator settings and with `champion.train.allocator.keep_freed_memory`, alternating.

Usage: .venv/bin/python bench/allocator.py [--pairs N] [--steps N]

Each run is a fresh interpreter: mnist_cnn_fast in channels-last, AdamW, label smoothing, batch 128,
random images (the time of a step does not depend on the pixels), 421 steps (an epoch of MNIST's
training split). Prints each run's seconds and page faults (minor faults of the process during the
loop) and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

_EPOCH = """
import resource, sys, time
import torch
from torch import nn
from champion.train.models import create_model
if sys.argv[1] == "keep":
    from champion.train.allocator import keep_freed_memory
    assert keep_freed_memory()
steps = int(sys.argv[2])
torch.manual_seed(0)
model = create_model("mnist_cnn_fast", 1, 10, (28, 28)).to(memory_format=torch.channels_last)
opt = torch.optim.AdamW(model.parameters(), 0.01, weight_decay=1e-4)
loss = nn.CrossEntropyLoss(label_smoothing=0.1)
images, labels = torch.rand(steps * 128, 1, 28, 28), torch.randint(0, 10, (steps * 128,))
faults, started = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
for s in range(steps):
    x = images[s * 128 : (s + 1) * 128].contiguous(memory_format=torch.channels_last)
    opt.zero_grad()
    loss(model(x), labels[s * 128 : (s + 1) * 128]).backward()
    opt.step()
print(time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=421, help="training steps of batch 128 (421: one MNIST epoch)")
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {"default": [], "keep": []}
    for _ in range(args.pairs):
        for mode in seconds:
            out = subprocess.run([sys.executable, "-c", _EPOCH, mode, str(args.steps)], capture_output=True, text=True, check=True)
            took, faults = out.stdout.split()
            seconds[mode].append(float(took))
            print(f"{mode:8s} {float(took):6.2f} s  {int(faults):>9,} page faults", flush=True)
    default, keep = statistics.median(seconds["default"]), statistics.median(seconds["keep"])
    print(f"median: glibc defaults {default:.2f} s, keep_freed_memory {keep:.2f} s: {default / keep:.2f}x")


if __name__ == "__main__":
    main()
