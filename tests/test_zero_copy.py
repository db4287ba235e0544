"""Zero-copy large models: written once to shared storage, registered by reference, hash-checked before use.

Local: a SQLite store with `tracking.artifact_location` on a folder standing for a shared filesystem.
The exported ONNX file is the one @deploy names (same inode), the storage grows by one copy, no consumer
writes into a model's folder (every model folder read-only, then the location itself), and a changed
file is refused by every consumer with both hashes named. Server: a real `mlflow server` with artefacts
in moto's S3 (tests/servers.py), `tracking.artifact_location=s3://...`: the version's source is the
s3:// folder the export wrote once, and deploy and serve refuse a changed object.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Iterator

import pytest

from conftest import invoke, module_workdir

pytestmark = pytest.mark.slow
NAME = "digits-cnn"
FAST = ("--quiet", "--set", "export.num_samples=20")


def client():
    from mlflow import MlflowClient

    return MlflowClient()


def disk_use(*roots: Path) -> int:
    """Bytes allocated under `roots`, as `du` counts them (hard links once)."""
    seen, total = set(), 0
    for p in [p for root in roots if root.exists() for p in (root, *root.rglob("*"))]:
        st = p.lstat()
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def chmod_tree(root: Path, writable: bool) -> None:
    """chmod -R a-w (or u+w) `root`."""
    for p in [root, *root.rglob("*")]:
        mode = p.stat().st_mode
        p.chmod(mode | stat.S_IWUSR if writable else mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def ok(*args: str):
    result = invoke(*args)
    assert result.exit_code == 0, result.stdout + result.stderr
    return result


def version_folder(name: str, version: str) -> Path:
    return Path(client().get_model_version_download_uri(name, version).removeprefix("file://"))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with module_workdir(tmp_path_factory, "zero-copy") as root:
        yield root
        for folder in (root / "shared", root / "mlruns"):  # leave nothing pytest cannot clean up
            if folder.exists():
                chmod_tree(folder, writable=True)


def test_shared_folder_written_once_registered_by_reference_and_read_only(store: Path) -> None:
    from champion.registry import storage, tracking
    from champion.deploy import serve
    from champion.errors import IntegrityError
    from champion.registry.integrity import onnx_sha256

    shared = store / "shared"
    located = ("--set", f"tracking.artifact_location={shared}")
    a = ok("train", *FAST, "--epochs", "1", *located).values["RUN_ID"]
    assert ok("promote", "--run-id", a, "--quiet").values["MODEL_VERSION"] == "1"
    champion = client().get_model_version(NAME, "1")
    # The champion is registered by reference (its LoggedModel's folder) and carries its hash and size.
    torch_dir = version_folder(NAME, "1")
    assert storage.content(torch_dir) == (champion.tags[storage.SHA256_TAG], int(champion.tags[storage.SIZE_TAG]))

    # A candidate on other data (so promote re-evaluates the champion) that cannot pass (threshold 0.9).
    # Trained on 15% of the images: it is a candidate only to be judged, so the cheaper the better.
    b = ok("train", *FAST, "--epochs", "1", "--set", "data.validation_split=0.85", "--set", "training.learning_rate=1e-9").values["RUN_ID"]
    before = disk_use(shared, store / "mlruns")  # model storage: the shared folder and MLflow's artefact store
    e1 = ok("export", "--model-name", NAME, "--quiet").values["EXPORT_RUN_ID"]
    exported = shared / f"{NAME}-onnx" / e1 / "model.onnx"
    inode = exported.stat().st_ino

    model_folders = [*(store / "mlruns").glob("*/models/*"), *(shared / f"{NAME}-onnx").iterdir()]
    for folder in model_folders:
        chmod_tree(folder, writable=False)
    chmod_tree(shared, writable=False)  # the location itself: nothing can be added either
    repo = store / "triton"
    try:
        rejected = invoke("promote", "--run-id", b, "--quiet")
        assert rejected.exit_code == 3, rejected.stderr  # judged: the champion was re-evaluated from read-only files
        report = json.loads(tracking.read_artifact(b, "gate_report.json"))
        assert report["champion"]["evaluated_on"].startswith("re-evaluated"), report
        assert ok("validate", "--export-run-id", e1, "--quiet").values["MODEL_VERSION"] == "1"
        grown = disk_use(shared, store / "mlruns") - before
        deploy_file = version_folder(f"{NAME}-onnx", "1") / "model.onnx"
        assert str(client().get_registered_model(f"{NAME}-onnx").aliases["deploy"]) == "1"
        assert deploy_file == exported and deploy_file.stat().st_ino == inode  # the file @deploy names is the one exported
        onnx_version = client().get_model_version(f"{NAME}-onnx", "1")
        assert int(onnx_version.tags[storage.ONNX_SIZE_TAG]) == exported.stat().st_size
        # One copy: the model folder, plus the export run's small records (metadata.json, the Gate 2 report).
        model_folder = disk_use(exported.parent)
        assert model_folder <= grown <= model_folder + 32 * 1024, (grown, model_folder)
        assert not list((store / "mlruns").rglob("model.onnx"))  # nothing in MLflow's own artefact store
        print(f"\nexport + validate: {grown} bytes on disk for a {exported.stat().st_size}-byte ONNX file (folder {model_folder})")
        ok("deploy", "triton", "--model-name", NAME, "--repository", str(repo), "--quiet")
        assert (repo / NAME / "1" / "model.onnx").read_bytes() == exported.read_bytes()
        served = serve.load_model(NAME)
        assert served.version == "1" and served.sha256 == onnx_version.tags["onnx_sha256"]
        # Export reads the champion from a read-only folder; it writes only its own new folder.
        shared.chmod(0o755)
        (shared / f"{NAME}-onnx").chmod(0o755)
        e2 = ok("export", "--model-name", NAME, "--quiet").values["EXPORT_RUN_ID"]
        assert (shared / f"{NAME}-onnx" / e2 / "model.onnx").is_file()
    finally:
        chmod_tree(shared, writable=True)
        for folder in model_folders:
            chmod_tree(folder, writable=True)
    # MLflow writes registered_model_meta into a folder loaded through models:/; nothing was.
    assert not [*store.rglob(storage.REGISTERED_MODEL_META)]

    # A changed file is refused by every consumer, naming both hashes.
    onnx_v1 = client().get_model_version(f"{NAME}-onnx", "1").tags["onnx_sha256"]
    exported.write_bytes(exported.read_bytes() + b"\0")
    now = onnx_sha256(exported)[0]
    refused = invoke("deploy", "triton", "--model-name", NAME, "--version", "1", "--repository", str(store / "triton-1"), "--quiet")
    assert refused.exit_code == 1 and onnx_v1 in refused.stderr and now in refused.stderr, refused.stderr
    assert not (store / "triton-1" / NAME / "1").exists()
    with pytest.raises(IntegrityError) as served_error:
        serve.load_model(NAME, version="1")
    assert onnx_v1 in str(served_error.value) and now in str(served_error.value)

    weights = next(torch_dir.rglob("model.pth"))
    weights.write_bytes(weights.read_bytes() + b"\0")
    actual = storage.content(torch_dir)[0]
    for args in (("export", "--model-name", NAME, "--quiet"), ("promote", "--run-id", b, "--quiet")):
        refused = invoke(*args)
        assert refused.exit_code == 1, (args, refused.stdout + refused.stderr)
        assert champion.tags[storage.SHA256_TAG] in refused.stderr and actual in refused.stderr, refused.stderr
    validate_refused = invoke("validate", "--export-run-id", e2, "--quiet")  # Gate 2 loads the champion as its reference
    assert validate_refused.exit_code == 1 and actual in validate_refused.stderr, validate_refused.stderr


def test_artifact_location_is_checked_before_any_work(workdir: Path) -> None:
    from champion.registry import storage
    from champion.errors import ConfigError

    for bad in ("relative/models", "gs://bucket/models", "s3:///models"):
        result = invoke("train", "--quiet", "--set", f"tracking.artifact_location={bad}")
        assert result.exit_code == 2 and "tracking.artifact_location" in result.stderr, (bad, result.stderr)
    assert not (workdir / "mlflow.db").exists()
    # A server refuses local sources outside a run's artefacts: said before an export writes anything.
    with pytest.raises(ConfigError, match="s3://bucket/prefix"):
        storage.check_location("/mnt/models", "http://mlflow.example:5000")
    storage.check_location("s3://bucket/models", "http://mlflow.example:5000")
    storage.check_location("/mnt/models", f"sqlite:///{workdir}/mlflow.db")


@pytest.fixture
def s3_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """moto's S3 and an `mlflow server` (SQLite backend) whose artefacts go to it; yields (server URL, endpoint)."""
    import boto3
    from servers import MlflowServer, moto_s3, s3_server_env

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for key in [k for k in os.environ if k.startswith("CHAMPION_")]:
        monkeypatch.delenv(key)
    with moto_s3(monkeypatch) as endpoint:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="team")
        server = MlflowServer(f"sqlite:///{tmp_path / 'server.db'}", "s3://team/mlflow", env=s3_server_env(endpoint), log=tmp_path / "server.log")
        server.start()
        try:
            monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
            monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", endpoint)  # the client writes and reads s3:// itself
            yield server.url, endpoint
        finally:
            server.kill()  # nothing to keep: SIGTERM would wait for MLflow's graceful shutdown (up to 30 s seen here)


def test_through_a_server_the_reference_is_s3(s3_server: tuple[str, str], tmp_path: Path) -> None:
    import boto3

    from champion.registry import storage
    from champion.deploy import serve
    from champion.errors import IntegrityError

    _, endpoint = s3_server
    run = ok("run", *FAST, "--epochs", "1", "--set", "tracking.artifact_location=s3://team/models")
    export_id = run.values["EXPORT_RUN_ID"]
    version = client().get_model_version(f"{NAME}-onnx", run.values["ONNX_MODEL_VERSION"])
    location = f"s3://team/models/{NAME}-onnx/{export_id}"
    assert version.source == location and client().get_model_version_download_uri(version.name, version.version) == location
    s3 = boto3.client("s3", endpoint_url=endpoint)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="team").get("Contents", [])]
    assert [k for k in keys if k.endswith("model.onnx")] == [f"models/{NAME}-onnx/{export_id}/model.onnx"]  # written once
    size = s3.head_object(Bucket="team", Key=f"models/{NAME}-onnx/{export_id}/model.onnx")["ContentLength"]
    assert version.tags[storage.ONNX_SIZE_TAG] == str(size) and version.tags["onnx_sha256"]
    champion = client().get_model_version(NAME, run.values["MODEL_VERSION"])
    assert champion.source.startswith("models:/") and champion.tags[storage.SHA256_TAG] and champion.tags[storage.SIZE_TAG]

    ok("deploy", "triton", "--model-name", NAME, "--repository", str(tmp_path / "triton"), "--quiet")
    assert serve.load_model(NAME).sha256 == version.tags["onnx_sha256"]
    key = f"models/{NAME}-onnx/{export_id}/model.onnx"
    s3.put_object(Bucket="team", Key=key, Body=s3.get_object(Bucket="team", Key=key)["Body"].read() + b"\0")
    refused = invoke("deploy", "triton", "--model-name", NAME, "--repository", str(tmp_path / "triton-2"), "--quiet")
    assert refused.exit_code == 1 and version.tags["onnx_sha256"] in refused.stderr, refused.stderr
    with pytest.raises(IntegrityError, match=version.tags["onnx_sha256"]):
        serve.load_model(NAME)
