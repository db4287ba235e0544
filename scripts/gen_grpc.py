"""Regenerate the gRPC modules of `champion serve` from src/champion/deploy/proto/grpc_predict_v2.proto.

The generated files are committed (champion[grpc] needs grpcio at run time, never grpcio-tools), so
run this only after changing the .proto or to move to another protobuf major version:

    python -m venv /tmp/gen && /tmp/gen/bin/pip install grpcio-tools==1.74.0
    /tmp/gen/bin/python scripts/gen_grpc.py            # rewrite the modules beside the .proto
    /tmp/gen/bin/python scripts/gen_grpc.py --check    # exit 1 if they are not what it would write

grpcio-tools 1.74.0 bundles protoc 31.1, whose code asks for protobuf >= 6.31.1 at run time (its
check refuses an older runtime) and for grpcio >= 1.74.0; a newer grpcio-tools writes code for
protobuf 7, which tritonclient[grpc] (in the test extra) does not install beside. Keep
champion[grpc]'s lower bounds in pyproject.toml equal to these.

One change to protoc's output: the messages are built in a descriptor pool of their own, not in
protobuf's default pool. tritonclient.grpc registers the same names (`inference.ModelInferRequest`,
...) in the default pool from Triton's own copy of the protocol, and a second registration of a name
there is an error: with a pool of our own, a process can import both (a test, a bench, a notebook).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PROTO = Path("champion/deploy/proto/grpc_predict_v2.proto")  # relative to SRC: names the modules' package
GRPC_TOOLS = "1.74.0"
GENERATED = ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2.pyi", "grpc_predict_v2_pb2_grpc.py")
DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
OWN_POOL = (
    "_descriptor_pool.DescriptorPool().AddSerializedFile(  "
    "# champion: a pool of its own (scripts/gen_grpc.py says why)\n    "
)


def generate(out: Path) -> None:
    """protoc's modules for PROTO under `out` (same package layout as src/), with the pool changed."""
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError:
        sys.exit(f"needs grpcio-tools=={GRPC_TOOLS} (see this script's docstring)")
    version = getattr(grpc_tools, "__version__", None) or _installed("grpcio-tools")
    if version != GRPC_TOOLS:
        sys.exit(f"grpcio-tools {version} is installed; the committed modules come from {GRPC_TOOLS} (see the docstring)")
    include = Path(protoc.__file__).parent / "_proto"  # protoc's own well-known types
    args = ["protoc", f"-I{SRC}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", str(SRC / PROTO)]
    if protoc.main(args) != 0:
        sys.exit("protoc failed (its message is above)")
    pb2 = out / PROTO.parent / GENERATED[0]
    text = pb2.read_text()
    if text.count(DEFAULT_POOL) != 1:
        sys.exit(f"{pb2.name}: expected one {DEFAULT_POOL!r} to change, found {text.count(DEFAULT_POOL)}: protoc's output changed")
    pb2.write_text(text.replace(DEFAULT_POOL, OWN_POOL))


def _installed(name: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed modules are not what would be written")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = []
        for name in GENERATED:
            new = (Path(tmp) / PROTO.parent / name).read_text()
            target = SRC / PROTO.parent / name
            if args.check:
                if not target.exists() or target.read_text() != new:
                    stale.append(name)
            else:
                target.write_text(new)
    if args.check:
        if stale:
            sys.exit(f"out of date: {', '.join(stale)}: run scripts/gen_grpc.py")
        print("the gRPC modules are up to date")
    else:
        print(f"wrote {', '.join(GENERATED)} in {SRC / PROTO.parent}")


if __name__ == "__main__":
    main()
