"""`champion deploy triton` writes a Triton model repository that Triton's own config schema accepts.

Real SQLite-backed MLflow with models trained for one epoch on digits, real ONNX files, Triton's
`ModelConfig` protobuf (from tritonclient) parsing config.pbtxt strictly, and a real S3 endpoint on
loopback (moto in server mode) for the s3:// form.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from conftest import ShipModel, image_folder, invoke, module_workdir

pytestmark = pytest.mark.slow
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] is in the test extra")

NAME = "tri-cnn"
RESNET = "tri-resnet"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with module_workdir(tmp_path_factory, "triton") as root:
        yield root


@pytest.fixture(scope="module")
def first(store: Path, shipped_model: ShipModel) -> str:
    """`champion run` for 1 epoch on digits: tri-cnn-onnx v1 @deploy."""
    return shipped_model(NAME, "export.num_samples=20", store=store).onnx_version


def new_version(name: str = NAME) -> str:
    """Export the champion again and validate it: a new version of `<name>-onnx` (no training)."""
    exported = invoke("export", "--model-name", name, "--quiet")
    assert exported.exit_code == 0, exported.stderr
    validated = invoke("validate", "--export-run-id", exported.values["EXPORT_RUN_ID"], "--quiet")
    assert validated.exit_code == 0, validated.stderr
    return validated.values["MODEL_VERSION"]


def deploy(repo: Path | str, *args: str, name: str = NAME):
    return invoke("deploy", "triton", "--model-name", name, "--repository", str(repo), "--quiet", *args)


def parse(text: str):
    from google.protobuf import text_format

    return text_format.Parse(text, model_config_pb2.ModelConfig())  # strict: an unknown field fails


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()}


def metadata(onnx_name: str, version: str) -> dict[str, Any]:
    from champion.registry import tracking

    mv = tracking.client().get_model_version(onnx_name, version)
    return json.loads(tracking.read_artifact(mv.tags["run_id"], "metadata.json"))


def logged_onnx(onnx_name: str, version: str) -> Path:
    """The registered version's model.onnx as the local artefact store holds it."""
    import mlflow

    from champion.registry import tracking

    source = tracking.client().get_model_version(onnx_name, version).source
    return Path(mlflow.get_logged_model(source.removeprefix("models:/")).artifact_location.removeprefix("file://")) / "model.onnx"


TRITON_TYPES = {1: "TYPE_FP32", 7: "TYPE_INT64", 10: "TYPE_FP16", 11: "TYPE_FP64"}


def assert_matches_graph(config, graph: Path, classes: list[str], model_dir: Path) -> None:
    """Every input and output of the config is the ONNX graph's: name, type, dims without the batch axis."""
    import onnx

    proto = onnx.load(str(graph), load_external_data=False)
    initializers = {t.name for t in proto.graph.initializer}

    def spec(values) -> list[tuple[str, str, list[int]]]:
        out = []
        for v in values:
            if v.name in initializers:
                continue
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
            assert dims[0] == -1, "the exported batch axis is symbolic"
            out.append((v.name, TRITON_TYPES[v.type.tensor_type.elem_type], dims[1:]))
        return out

    dtype = model_config_pb2.DataType.Name
    assert [(i.name, dtype(i.data_type), list(i.dims)) for i in config.input] == spec(proto.graph.input)
    assert [(o.name, dtype(o.data_type), list(o.dims)) for o in config.output] == spec(proto.graph.output)
    assert config.max_batch_size > 0 and config.dynamic_batching.max_queue_delay_microseconds > 0
    assert config.platform == "onnxruntime_onnx"
    [logits] = config.output
    assert logits.label_filename == "labels.txt" and list(logits.dims) == [len(classes)]
    assert (model_dir / "labels.txt").read_text().splitlines() == classes


def test_config_matches_the_graph_and_the_classes(store: Path, first: str, tmp_path: Path) -> None:
    import onnxruntime as ort

    result = deploy(tmp_path, "--kind", "gpu", "--instances", "2")
    assert result.exit_code == 0, result.stderr
    model_dir = tmp_path / NAME  # Triton serves the base name, without -onnx
    assert result.values == {"TRITON_MODEL_DIR": str(model_dir), "TRITON_MODEL_VERSION": first}
    config = parse((model_dir / "config.pbtxt").read_text())
    assert config.name == NAME
    assert list(config.version_policy.specific.versions) == [int(first)]
    [group] = config.instance_group
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind) == "KIND_GPU" and group.count == 2
    meta = metadata(f"{NAME}-onnx", first)
    graph = model_dir / first / "model.onnx"
    assert_matches_graph(config, graph, meta["preprocessing"]["classes"], model_dir)

    from champion.registry import integrity

    assert integrity.onnx_sha256(graph)[0] == meta["onnx_sha256"]
    # The deployed file serves a batch shaped as the config says.
    x = np.random.default_rng(0).random((3, *config.input[0].dims), dtype=np.float32)
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    assert session.run(None, {config.input[0].name: x})[0].shape == (3, *config.output[0].dims)


def test_name_with_onnx_suffix_and_default_kind(store: Path, first: str, tmp_path: Path) -> None:
    result = deploy(tmp_path, name=f"{NAME}-onnx")
    assert result.exit_code == 0, result.stderr
    config = parse((tmp_path / NAME / "config.pbtxt").read_text())
    [group] = config.instance_group
    assert config.name == NAME and model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind) == "KIND_CPU" and group.count == 1


def test_resnet18_config_matches_its_graph(store: Path, tmp_path: Path) -> None:
    """A torchvision ResNet-18 on a tiny RGB image folder (24 images: one epoch of digits takes minutes here)."""
    images = image_folder(tmp_path / "images")
    result = invoke(
        "run", "--quiet", "--epochs", "1", "--set", f"model.name={RESNET}", "--set", "model.architecture=resnet18",
        "--set", f"data.source={images}", "--set", "data.channels=3", "--set", "data.image_size=[32,32]", "--set", "promotion_criteria.threshold=0.0",
        "--set", "export.num_samples=20", "--set", "export.atol=1e-3",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    version = result.values["ONNX_MODEL_VERSION"]
    repo = tmp_path / "repo"
    deployed = deploy(repo, name=RESNET)
    assert deployed.exit_code == 0, deployed.stderr
    config = parse((repo / RESNET / "config.pbtxt").read_text())
    classes = metadata(f"{RESNET}-onnx", version)["preprocessing"]["classes"]
    assert_matches_graph(config, repo / RESNET / version / "model.onnx", classes, repo / RESNET)
    assert list(config.input[0].dims) == [3, 32, 32] and classes == ["bright", "dark", "mid"]


def test_rerun_changes_nothing(store: Path, first: str, tmp_path: Path) -> None:
    assert deploy(tmp_path).exit_code == 0
    before = snapshot(tmp_path)
    again = deploy(tmp_path)
    assert again.exit_code == 0, again.stderr
    assert again.values["TRITON_MODEL_VERSION"] == first
    assert snapshot(tmp_path) == before  # same bytes, same mtimes: nothing rewritten


def test_modified_model_is_refused_and_nothing_is_written(store: Path, first: str, tmp_path: Path) -> None:
    onnx_file = logged_onnx(f"{NAME}-onnx", first)
    original = onnx_file.read_bytes()
    onnx_file.write_bytes(original + b"\0")  # still loads; no longer what was exported
    try:
        result = deploy(tmp_path / "repo")
    finally:
        onnx_file.write_bytes(original)
    assert result.exit_code == 1, result.stdout + result.stderr
    assert "not the model that was exported" in result.stderr and "TRITON_MODEL_DIR" not in result.values
    assert not (tmp_path / "repo").exists()


def test_changed_deployed_version_is_refused(store: Path, first: str, tmp_path: Path) -> None:
    assert deploy(tmp_path).exit_code == 0
    deployed = tmp_path / NAME / first / "model.onnx"
    deployed.write_bytes(deployed.read_bytes() + b"\0")
    before = snapshot(tmp_path)
    result = deploy(tmp_path)
    assert result.exit_code == 1 and "changed after champion wrote it" in result.stderr, result.stderr
    assert snapshot(tmp_path) == before


def test_kill_during_the_copy_leaves_no_version_folder(store: Path, first: str, tmp_path: Path) -> None:
    """SIGKILL while the model file is being copied: Triton finds no numeric folder, the next deploy works."""
    repo = tmp_path / "repo"
    script = textwrap.dedent(f"""
        import sys, time
        from champion.deploy import triton

        def slow_copy(src, dst):  # half the file, then hang: the kill lands mid-copy
            data = open(src, "rb").read()
            with open(dst, "wb") as f:
                f.write(data[: len(data) // 2])
                f.flush()
            print("COPYING", flush=True)
            time.sleep(120)

        triton._copy_file = slow_copy
        triton.deploy({NAME!r}, {str(repo)!r}, quiet=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=store, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "COPYING", proc.stderr.read()
        model_dir = repo / NAME
        assert [p.name for p in model_dir.iterdir() if p.name.startswith(".tmp-")]  # the copy is in flight
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.stderr.close()
    names = [p.name for p in model_dir.iterdir()]
    assert not [n for n in names if n.isdigit()] and "config.pbtxt" not in names

    result = deploy(repo)
    assert result.exit_code == 0, result.stderr
    assert (model_dir / first / "model.onnx").is_file()
    assert list(parse((model_dir / "config.pbtxt").read_text()).version_policy.specific.versions) == [int(first)]


def test_rollback_and_keep_prune_only_own_versions(store: Path, first: str, tmp_path: Path) -> None:
    second = new_version()
    third = new_version()
    model_dir = tmp_path / NAME
    for v in (first, second):
        assert deploy(tmp_path, "--version", v).exit_code == 0
    # Rollback: a lower version really changes what Triton serves.
    rolled = deploy(tmp_path, "--version", first)
    assert rolled.exit_code == 0 and rolled.values["TRITON_MODEL_VERSION"] == first
    assert list(parse((model_dir / "config.pbtxt").read_text()).version_policy.specific.versions) == [int(first)]
    assert (model_dir / second / "model.onnx").is_file()

    (model_dir / "99").mkdir()  # a version folder someone put there by hand
    (model_dir / "99" / "model.onnx").write_bytes(b"not champion's")
    (tmp_path / "other-model").mkdir()
    result = deploy(tmp_path, "--alias", "deploy", "--keep", "1")  # @deploy is now `third`
    assert result.exit_code == 0, result.stderr
    assert result.values["TRITON_MODEL_VERSION"] == third
    assert sorted(p.name for p in model_dir.iterdir() if p.is_dir()) == sorted([third, "99"])
    assert (tmp_path / "other-model").is_dir()
    assert list(parse((model_dir / "config.pbtxt").read_text()).version_policy.specific.versions) == [int(third)]


def test_foreign_folder_and_file_are_refused_before_any_work(store: Path, first: str, tmp_path: Path) -> None:
    (tmp_path / NAME).mkdir()
    (tmp_path / NAME / "notes.txt").write_text("mine")
    result = deploy(tmp_path)
    assert result.exit_code == 2 and "did not write" in result.stderr, result.stderr
    assert [p.name for p in (tmp_path / NAME).iterdir()] == ["notes.txt"]

    (tmp_path / "file").write_text("a file")
    result = deploy(tmp_path / "file")
    assert result.exit_code == 2 and "is a file" in result.stderr, result.stderr


def test_bad_inputs_give_one_message_and_write_nothing(store: Path, first: str, tmp_path: Path) -> None:
    import mlflow

    from champion.registry import tracking

    repo = tmp_path / "repo"
    cases = [
        (("--version", "1"), "no-such-model", "no registered model 'no-such-model-onnx'"),
        (("--alias", "nosuch"), NAME, "has no alias @nosuch"),
        (("--version", "999"), NAME, "has no version 999"),
        (("--version", "two"), NAME, "--version 'two'"),
        (("--kind", "tpu"), NAME, "--kind 'tpu'"),
    ]
    # A version of an -onnx model that holds a PyTorch model, not an ONNX file.
    c = tracking.client()
    onnx_v1 = c.get_model_version(f"{NAME}-onnx", first)
    torch_uri = c.get_run(c.get_model_version(NAME, "1").run_id).data.tags["model_uri"]
    fake = mlflow.register_model(torch_uri, "fake-onnx", tags={"gate2.result": "passed", "run_id": onnx_v1.tags["run_id"]})
    cases.append((("--version", str(fake.version)), "fake", "holds no ONNX model"))
    for args, name, message in cases:
        result = deploy(repo, *args, name=name)
        assert result.exit_code in (1, 2) and message in result.stderr, (args, result.stderr)
        assert result.stderr.count("error:") == 1 and "Traceback" not in result.stderr
        assert not repo.exists(), args


def test_external_data_model_gets_the_directory_layout(store: Path, first: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    monkeypatch.setenv("CHAMPION_ONNX_EXTERNAL_DATA_BYTES", "0")  # the >2 GB layout on a small model
    version = new_version()
    monkeypatch.delenv("CHAMPION_ONNX_EXTERNAL_DATA_BYTES")
    result = deploy(tmp_path, "--version", version)
    assert result.exit_code == 0, result.stderr
    folder = tmp_path / NAME / version / "model.onnx"
    assert folder.is_dir() and sorted(p.name for p in folder.iterdir()) == ["model.onnx", "model.onnx.data"]
    meta = metadata(f"{NAME}-onnx", version)
    config = parse((tmp_path / NAME / "config.pbtxt").read_text())
    assert_matches_graph(config, folder / "model.onnx", meta["preprocessing"]["classes"], tmp_path / NAME)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.zeros((2, *config.input[0].dims), dtype=np.float32)
    assert session.run(None, {"input": x})[0].shape == (2, len(meta["preprocessing"]["classes"]))
    again = deploy(tmp_path, "--version", version)  # the folder layout is verified on re-run too
    assert again.exit_code == 0, again.stderr


# --- s3:// repositories, against moto's S3 server on loopback ------------------------------------


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    pytest.importorskip("moto.server", reason="moto[server] provides the loopback S3 endpoint")
    from servers import moto_s3

    with pytest.MonkeyPatch.context() as mp, moto_s3(mp) as url:
        mp.setenv("AWS_ENDPOINT_URL", url)  # as a Triton pod would be configured
        yield url


def test_s3_repository(store: Path, first: str, endpoint: str, tmp_path: Path) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint)
    bucket = f"triton-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)

    result = deploy(f"s3://{bucket}/models", "--version", first)
    assert result.exit_code == 0, result.stderr
    assert result.values == {"TRITON_MODEL_DIR": f"s3://{bucket}/models/{NAME}", "TRITON_MODEL_VERSION": first}

    def objects() -> dict[str, tuple[str, Any]]:
        listed = s3.list_objects_v2(Bucket=bucket, Prefix="models/").get("Contents", [])
        return {o["Key"]: (o["ETag"], o["LastModified"]) for o in listed}

    written = objects()
    assert {f"models/{NAME}/config.pbtxt", f"models/{NAME}/labels.txt", f"models/{NAME}/{first}/model.onnx"} <= set(written)
    body = s3.get_object(Bucket=bucket, Key=f"models/{NAME}/config.pbtxt")["Body"].read().decode()
    config = parse(body)
    assert list(config.version_policy.specific.versions) == [int(first)] and config.name == NAME
    local = tmp_path / NAME
    (local / first).mkdir(parents=True)
    for key in ("labels.txt", f"{first}/model.onnx"):
        s3.download_file(bucket, f"models/{NAME}/{key}", str(local / key))
    assert_matches_graph(config, local / first / "model.onnx", metadata(f"{NAME}-onnx", first)["preprocessing"]["classes"], local)

    again = deploy(f"s3://{bucket}/models", "--version", first)
    assert again.exit_code == 0, again.stderr
    assert objects() == written  # re-run: the version verified, nothing uploaded again

    s3.put_object(Bucket=bucket, Key=f"theirs/{NAME}/config.pbtxt", Body=b'name: "theirs"')
    refused = deploy(f"s3://{bucket}/theirs")
    assert refused.exit_code == 2 and "did not write" in refused.stderr, refused.stderr
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="theirs/")["Contents"]] == [f"theirs/{NAME}/config.pbtxt"]

    missing = deploy("s3://no-such-bucket-champion/models")
    errors = [line for line in missing.stderr.splitlines() if line.startswith("error:")]
    assert missing.exit_code == 1 and len(errors) == 1, missing.stderr
    assert "bucket 'no-such-bucket-champion' does not exist" in errors[0] and "TRITON_MODEL_DIR" not in missing.values
