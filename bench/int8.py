"""Benchmark: the int8 gate's model against the float ONNX model it came from, for mnist_cnn and resnet18.

Usage: .venv/bin/python bench/int8.py [--mnist DIR] [--repeats N] [--cases mnist_cnn,resnet18] [--json FILE]

For each case, `champion run` with `export.formats=[onnx,onnx_int8]` in a fresh folder (its own
SQLite store; one data cache for the whole benchmark), then, in this process, both ONNX models from
the registry (the int8 one from its run when the gate rejected it):

- size: the ONNX files' bytes and their ratio (int8 / float);
- accuracy: float and int8 on the validation split (the int8 gate's own figures, from
  int8_gate_report.json) and on the test split when the data has one, and top-1 agreement;
- latency at batch 1 and 32: ONNX Runtime CPU sessions with default options (as `champion serve`
  runs them), created before timing, warmed up, then float and int8 timed in turns, `--repeats`
  times each; the median wall time and the median process CPU time (all threads) per call, and
  their ratios int8 / float (below 1: int8 is faster). Never assumed: on a small CNN int8 can be
  slower, the quantize/dequantize work outweighing the cheaper arithmetic.

Cases: `mnist_cnn` on MNIST (`configs/mnist.yaml`, --mnist DIR or ../shared/data/mnist; digits when
neither is there) and `resnet18` on digits at 32x32 greyscale (the small-image stem: 3x3 conv, no
max-pool), three epochs: ResNet-18 on MNIST takes tens of minutes per epoch on 2 CPU cores, and the
int8 figures need a trained model, not a large data set.

Busy machine: compare ratios measured in the same run, and the CPU-time ratios beside the wall ones.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"
WARMUP = 5


def cases(mnist: Path | None) -> dict[str, list[str]]:
    mnist_cnn = ["--config", str(ROOT / "configs" / "mnist.yaml"), "--set", f"data.source={mnist}"] if mnist else ["--set", "model.name=digits-cnn"]
    resnet18 = [
        "--set", "model.name=digits-resnet18", "--set", "model.architecture=resnet18", "--set", "data.image_size=[32,32]",
        "--set", "training.epochs=3",
    ]  # fmt: skip
    return {"mnist_cnn": mnist_cnn, "resnet18": resnet18}


def champion_run(folder: Path, args: list[str], cache: Path) -> tuple[dict[str, str], float, float]:
    """`champion run` in `folder`; its KEY=value outputs, wall seconds and CPU seconds."""
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [str(ROOT / ".venv" / "bin" / "champion"), "run", *args, "--set", "export.formats=[onnx,onnx_int8]", "--quiet"]
    before = os.times()
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = os.times()
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    values = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line and line.split("=")[0].isupper())
    return values, wall, (after.children_user - before.children_user) + (after.children_system - before.children_system)


def timed_in_turns(fns: list[Callable[[], Any]], repeats: int) -> list[dict[str, float]]:
    """Median wall and process-CPU milliseconds per call of each function, timed in turns."""
    for fn in fns:
        for _ in range(WARMUP):
            fn()
    wall: list[list[float]] = [[] for _ in fns]
    cpu: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            wall[i].append(time.perf_counter() - t0)
            cpu[i].append(time.process_time() - c0)
    return [{"wall_ms": statistics.median(w) * 1000, "cpu_ms": statistics.median(c) * 1000} for w, c in zip(wall, cpu)]


def measure(folder: Path, values: dict[str, str], cache: Path, repeats: int) -> dict[str, Any]:
    import mlflow
    import onnxruntime as ort

    from champion import ingest
    from champion.registry import integrity, tracking

    os.environ["XDG_CACHE_HOME"] = str(cache)
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    c = mlflow.MlflowClient()
    int8_run = c.get_run(values["INT8_RUN_ID"])
    report = json.loads(Path(c.download_artifacts(int8_run.info.run_id, "int8_gate_report.json", str(folder / "dl"))).read_text())
    export_run = c.get_run(values["EXPORT_RUN_ID"])

    def onnx_file(uri: str, where: str) -> Path:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(folder / where)))
        return local / mlflow.models.Model.load(str(local)).flavors["onnx"]["data"]

    files = [onnx_file(export_run.data.tags["model_uri"], "float"), onnx_file(int8_run.data.tags["int8.model_uri"], "int8")]
    nbytes = [sum((f.parent / name).stat().st_size for name in integrity.model_files(f)) for f in files]  # graph + external data
    sessions = [ort.InferenceSession(str(f), providers=["CPUExecutionProvider"]) for f in files]
    name = sessions[0].get_inputs()[0].name
    cfg = tracking.load_run_config(values["RUN_ID"])
    test = ingest.prepare(cfg.data, cfg.training.seed, splits=("test",))
    val = ingest.prepare(cfg.data, cfg.training.seed, splits=("val",))
    x_val = val.split("val")[0]
    out: dict[str, Any] = {
        "int8_result": values["INT8_RESULT"],
        "size": {"float_bytes": nbytes[0], "int8_bytes": nbytes[1], "ratio": nbytes[1] / nbytes[0]},
        "gate_size": report["size"],
        "val": {**report["accuracy"], "top1_agreement": report["top1_agreement"]},
        "gate_latency": report["latency"],
    }
    if test.has("test"):
        x, y = test.split("test")
        preds = [np.concatenate([s.run(None, {name: x[i : i + 512].astype(np.float32) / 255})[0].argmax(1) for i in range(0, len(x), 512)]) for s in sessions]
        out["test"] = {"float": float((preds[0] == y).mean()), "int8": float((preds[1] == y).mean()), "samples": int(len(y)),
                       "top1_agreement": float((preds[0] == preds[1]).mean())}  # fmt: skip
    for bs in (1, 32):
        batch = np.resize(x_val, (bs, *x_val.shape[1:])).astype(np.float32) / 255
        f, q = timed_in_turns([lambda s=s: s.run(None, {name: batch}) for s in sessions], repeats)
        out[f"batch_{bs}"] = {"float": f, "int8": q, "wall_ratio": q["wall_ms"] / f["wall_ms"], "cpu_ratio": q["cpu_ms"] / max(f["cpu_ms"], 1e-9)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=SHARED_MNIST if (SHARED_MNIST / "train-images-idx3-ubyte.gz").is_file() else None)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--cases", default="mnist_cnn,resnet18")
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures to this file.")
    args = parser.parse_args()
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                               "repeats": args.repeats, "cases": {}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="champion-bench-int8-") as tmp:
        cache = Path(tmp) / "cache"
        for case, run_args in cases(args.mnist).items():
            if case not in args.cases.split(","):
                continue
            folder = Path(tmp) / case
            folder.mkdir()
            values, wall, cpu = champion_run(folder, run_args, cache)
            print(f"{case}: champion run {wall:.1f} s wall, {cpu:.1f} s CPU, INT8_RESULT={values.get('INT8_RESULT')}", file=sys.stderr)
            results["cases"][case] = {"run_args": run_args, "run_wall_s": wall, "run_cpu_s": cpu, **measure(folder, values, cache, args.repeats)}
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print("\n| model | data | int8 gate | size int8/float | val acc float → int8 | test acc float → int8 | agreement | batch 1 int8/float wall (CPU) | batch 32 int8/float wall (CPU) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case, r in results["cases"].items():
        data = "MNIST" if "configs/mnist.yaml" in " ".join(r["run_args"]) else ("digits 32x32" if case == "resnet18" else "digits")
        test = f"{r['test']['float']:.4f} → {r['test']['int8']:.4f}" if "test" in r else "n/a"
        lat = {bs: f"{r[f'batch_{bs}']['wall_ratio']:.2f}x ({r[f'batch_{bs}']['cpu_ratio']:.2f}x; {r[f'batch_{bs}']['float']['wall_ms']:.3g} → {r[f'batch_{bs}']['int8']['wall_ms']:.3g} ms)" for bs in (1, 32)}
        print(f"| {case} | {data} | {r['int8_result']} | {r['size']['ratio']:.2f} | {r['val']['float']:.4f} → {r['val']['int8']:.4f} | {test} | "
              f"{r['val']['top1_agreement']:.4f} | {lat[1]} | {lat[32]} |")  # fmt: skip


if __name__ == "__main__":
    main()
