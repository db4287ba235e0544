"""A real Triton Inference Server for bench/serve.py to measure beside `champion serve` (not a benchmark itself).

The `nvidia-pytriton` wheel carries a `tritonserver` binary (Triton 2.51 in 0.7.0) with exactly one
backend, python (`pytriton/tritonserver/backends/` holds `python/` only: no onnxruntime backend), and
a python-backend stub per CPython version (`python_backend_stubs/3.8` ... `3.13`). So the closest
Triton peer that installs here is a python-backend model that runs ONNX Runtime on the exported file:
bench/triton_model.py, copied in as `model.py`.

Nothing is installed into the bench's environment; everything lives under `<temp>/champion-triton/`:

- the wheel, fetched with `pip download --no-deps` (or taken from `--triton-wheel`), unpacked once,
  with the stub for this interpreter's Python version put where the backend looks for it, as
  pytriton does;
- a venv of this interpreter holding the onnxruntime version the bench runs (so both servers run the
  same ONNX Runtime) and numpy<2. The stub's compiled numpy bridge predates numpy 2: with numpy 2
  every output tensor reaches the client empty (pytriton itself pins numpy<2).

The stub embeds libpython: with this interpreter's library folder first on LD_LIBRARY_PATH and the
venv's bin folder first on PATH (the `python3` there is how the embedded interpreter finds its prefix,
pytriton's own way to pick a venv), Triton's model runs in that venv.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

from champion.deploy.triton_config import MAX_BATCH_SIZE, MAX_QUEUE_DELAY_US, Tensor, graph_tensors

PACKAGE = "nvidia-pytriton"
VERSION = "0.7.0"  # pinned: its tritonserver carries the python backend only (see the docstring)
CACHE = Path(tempfile.gettempdir()) / "champion-triton"
MODEL_SOURCE = Path(__file__).with_name("triton_model.py")


class Unavailable(RuntimeError):
    """Triton cannot run here; the message says why, for the bench to print."""


def install(wheel: Path | None = None) -> Path:
    """The unpacked `pytriton/tritonserver` folder, ready to run, fetching and unpacking the wheel the first time."""
    stub_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    # One unpacked tree per interpreter version: the stub copied into it is that version's.
    root = CACHE / f"{PACKAGE}-{VERSION}-py{stub_version}"
    server = root / "pytriton" / "tritonserver"
    if (root / ".complete").is_file():
        return server
    if wheel is None:
        wheel = _download()
    elif not wheel.is_file():
        raise Unavailable(f"--triton-wheel {wheel}: no such file")
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=CACHE))
    try:
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                if not info.filename.startswith(("pytriton/tritonserver/", "nvidia_pytriton.libs/")):
                    continue
                path = Path(zf.extract(info, tmp))
                mode = info.external_attr >> 16  # zipfile drops the permission bits; the binaries need x
                if mode:
                    path.chmod(mode & 0o777)
        unpacked = tmp / "pytriton" / "tritonserver"
        if not (unpacked / "bin" / "tritonserver").is_file():
            raise Unavailable(f"{wheel.name} holds no pytriton/tritonserver/bin/tritonserver")
        stubs = unpacked / "python_backend_stubs"
        stub = stubs / stub_version / "triton_python_backend_stub"
        if not stub.is_file():
            have = ", ".join(sorted(p.name for p in stubs.iterdir())) if stubs.is_dir() else "none"
            raise Unavailable(f"{wheel.name} has no python-backend stub for Python {stub_version} (it has: {have})")
        # Same depth below the wheel's root as python_backend_stubs/X.Y/, so its RUNPATH still finds the libs.
        shutil.copy2(stub, unpacked / "backends" / "python" / "triton_python_backend_stub")
        (tmp / ".complete").write_text(f"{wheel.name}\n")
        if not (root / ".complete").is_file():  # else another run unpacked it meanwhile
            shutil.rmtree(root, ignore_errors=True)  # a half-unpacked tree from an interrupted run
            tmp.rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return server


def _download() -> Path:
    wheels = CACHE / "wheels"
    found = sorted(wheels.glob(f"nvidia_pytriton-{VERSION}-*.whl"))
    if found:
        return found[0]
    CACHE.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", str(wheels), f"{PACKAGE}=={VERSION}"])
    found = sorted(wheels.glob(f"nvidia_pytriton-{VERSION}-*.whl"))
    if not found:
        raise Unavailable(f"pip download left no nvidia_pytriton-{VERSION}-*.whl in {wheels}")
    return found[0]


def _run(cmd: list[str]) -> str:
    """Its stdout; Unavailable, with the end of its output, when it fails."""
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise Unavailable(f"`{' '.join(cmd)}` failed (exit {out.returncode}): {(out.stderr or out.stdout).strip()[-500:]}")
    return out.stdout.strip()


def python_env() -> tuple[Path, str]:
    """The venv the python backend's model runs in, made the first time, and what it holds."""
    ort = metadata.version("onnxruntime")
    requirements = [f"onnxruntime=={ort}", "numpy<2"]
    venv = CACHE / f"venv-py{sys.version_info.major}.{sys.version_info.minor}"
    marker = venv / ".complete"
    if marker.is_file() and marker.read_text().splitlines()[0] == " ".join(requirements):
        return venv, marker.read_text().splitlines()[1]
    shutil.rmtree(venv, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    python = str(venv / "bin" / "python")
    _run([sys.executable, "-m", "venv", str(venv)])
    _run([python, "-m", "pip", "install", "--quiet", *requirements])
    holds = _run([python, "-c", "import numpy, onnxruntime; print(f'onnxruntime {onnxruntime.__version__}, numpy {numpy.__version__}')"])
    marker.write_text(f"{' '.join(requirements)}\n{holds}\n")
    return venv, holds


def backends(server: Path) -> list[str]:
    """The backends the unpacked server carries."""
    return sorted(p.name for p in (server / "backends").iterdir() if p.is_dir())


def write_repository(repo: Path, name: str, graph: Path, files: list[str], instances: int = 1) -> None:
    """Triton's model repository at `repo`: model `name`, version 1, the python backend running ONNX Runtime.

    Args:
        repo: An empty or missing folder.
        name: The name Triton serves the model as (the one `champion serve` uses, so the URLs match).
        graph: The verified `model.onnx`; its batch axis must be symbolic (Triton's dynamic batching).
        files: The graph's files relative to its folder (model.onnx, and external data if any).
        instances: Model instances (stub processes) Triton runs.
    """
    version = repo / name / "1"
    version.mkdir(parents=True)
    for rel in files:
        (version / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(graph.parent / rel, version / rel)
    shutil.copyfile(MODEL_SOURCE, version / "model.py")
    inputs, outputs = graph_tensors(graph)

    def entries(tensors: list[Tensor]) -> str:
        # Triton's dims leave out the batch axis; other symbolic dimensions are -1.
        return ", ".join(
            f'{{ name: "{t.name}", data_type: {t.data_type}, dims: [ {", ".join(str(-1 if d is None else d) for d in t.shape[1:])} ] }}'
            for t in tensors
        )

    # Batching as `champion deploy triton` configures Triton: the same largest batch and queue delay.
    (repo / name / "config.pbtxt").write_text(
        f'name: "{name}"\n'
        'backend: "python"\n'
        f"max_batch_size: {MAX_BATCH_SIZE}\n"
        f"input [ {entries(inputs)} ]\n"
        f"output [ {entries(outputs)} ]\n"
        f"instance_group [ {{ count: {instances}, kind: KIND_CPU }} ]\n"
        f"dynamic_batching {{ max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US} }}\n"
    )  # fmt: skip


def command(server: Path, repo: Path, http_port: int, grpc_port: int) -> list[str]:
    """tritonserver on loopback: HTTP and gRPC on the given ports, no metrics, warnings and errors only."""
    return [
        str(server / "bin" / "tritonserver"),
        f"--model-repository={repo}",
        f"--backend-directory={server / 'backends'}",
        f"--cache-directory={server / 'caches'}",
        "--http-address=127.0.0.1", f"--http-port={http_port}",
        "--grpc-address=127.0.0.1", f"--grpc-port={grpc_port}",
        "--allow-metrics=false",
        "--log-info=false",
        "--exit-timeout-secs=10",
    ]  # fmt: skip


def environment(env: dict[str, str], venv: Path) -> dict[str, str]:
    """`env` with this interpreter's libpython and `venv`'s bin folder first, for the python backend's stub."""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    ld = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
    return {**env, "LD_LIBRARY_PATH": ld, "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"}
