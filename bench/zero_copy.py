"""Bytes written per registered version: export, Gate 2 and the consumers, with and without shared storage.

Usage:
    .venv/bin/python bench/zero_copy.py                      # --architecture resnet18 (a 45 MB ONNX model)

Trains one model (1 epoch on `digits`, 15% of the images: the model's size is what counts here, not
its accuracy), promotes it, then measures in this process, step by step, the bytes handed to write()
(`wchar` of /proc/self/io: every file written, temporary ones included) and how much the model storage
grew on disk (`du` of MLflow's artefact store plus the shared folder): `champion export`, `champion
validate` (which registers `<name>-onnx`), `champion deploy triton` and `serve.load_model`. It does so
twice, in fresh stores: with MLflow's artefact store alone, and with `tracking.artifact_location` on a
shared folder (unless --store-only). Run it on older code with `PYTHONPATH=<old checkout>/src
.venv/bin/python bench/zero_copy.py --store-only` for the "before" figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def wchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/self/io")


def disk_use(*roots: Path) -> int:
    seen, total = set(), 0
    for p in [p for r in roots if r.exists() for p in (r, *r.rglob("*"))]:
        st = p.lstat()
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def measure(root: Path, architecture: str, shared: Path | None) -> dict[str, tuple[int, int]]:
    from conftest import invoke

    from champion.deploy import serve

    os.chdir(root)
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # mlflow.set_tracking_uri exported the previous store's
    os.environ["XDG_CACHE_HOME"] = str(root.parent / "cache")  # one data cache for both stores
    located = ["--set", f"tracking.artifact_location={shared}"] if shared else []
    name = f"bench-{architecture}"
    train = invoke(
        "train", "--quiet", "--epochs", "1", "--set", f"model.name={name}", "--set", f"model.architecture={architecture}",
        "--set", "data.validation_split=0.85", "--set", "promotion_criteria.threshold=0", "--set", "export.num_samples=20", *located,
    )  # fmt: skip
    assert train.exit_code == 0, train.stderr
    promoted = invoke("promote", "--run-id", train.values["RUN_ID"], "--quiet")
    assert promoted.exit_code == 0, promoted.stdout + promoted.stderr
    stores = (root / "mlruns", *([shared] if shared else []))
    figures: dict[str, tuple[int, int]] = {}
    state: dict[str, str] = {}

    def step(label: str, fn) -> None:
        w, d = wchar(), disk_use(*stores)
        fn()
        figures[label] = (wchar() - w, disk_use(*stores) - d)

    def export() -> None:
        result = invoke("export", "--model-name", name, "--quiet")
        assert result.exit_code == 0, result.stderr
        state["export"] = result.values["EXPORT_RUN_ID"]

    def validate() -> None:
        result = invoke("validate", "--export-run-id", state["export"], "--quiet")
        assert result.exit_code == 0, result.stderr

    def deploy() -> None:
        result = invoke("deploy", "triton", "--model-name", name, "--repository", str(root / "triton"), "--quiet")
        assert result.exit_code == 0, result.stderr

    step("export", export)
    step("validate (registers)", validate)
    step("deploy triton", deploy)
    step("serve (load)", lambda: serve.load_model(name))
    from mlflow import MlflowClient

    version = MlflowClient().get_model_version(f"{name}-onnx", "1")
    figures["onnx bytes"] = (int(version.tags.get("onnx_size_bytes") or _onnx_size(root, shared)), 0)
    return figures


def _onnx_size(root: Path, shared: Path | None) -> int:
    found = [p for r in (root / "mlruns", shared) if r for p in r.rglob("model.onnx")]
    return found[0].stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", default="resnet18")
    parser.add_argument("--store-only", action="store_true", help="Only MLflow's artefact store (code before the key).")
    args = parser.parse_args()
    from champion.config import Config

    shared = "tracking" in Config.model_fields and not args.store_only
    modes = ["artefact store"] + (["shared folder"] if shared else [])
    with tempfile.TemporaryDirectory(prefix="champion-zero-copy-") as tmp:
        for mode in modes:
            root = Path(tmp) / mode.replace(" ", "-")
            root.mkdir()
            started = time.perf_counter()
            figures = measure(root, args.architecture, Path(tmp) / "shared" if mode == "shared folder" else None)
            size = figures.pop("onnx bytes")[0]
            print(f"\n{mode} ({args.architecture}: ONNX {size / 1e6:.1f} MB, {time.perf_counter() - started:.0f} s)")
            total = 0
            for label, (written, grown) in figures.items():
                total += written
                print(f"  {label:22s} written {written / 1e6:8.1f} MB ({written / size:4.2f} copies)   store grew {grown / 1e6:7.1f} MB")
            print(f"  {'all four':22s} written {total / 1e6:8.1f} MB ({total / size:4.2f} copies)")


if __name__ == "__main__":
    main()
