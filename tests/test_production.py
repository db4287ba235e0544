"""The team's profile for real: `champion run` and `deploy triton` against `mlflow server` with a PostgreSQL
backend store (a fresh database on the local PostgreSQL) and artefacts in S3 (moto's server on loopback).

Everything lands where docs/production.md says: runs, registered models, versions and aliases as
rows in PostgreSQL; run artefacts, logged models and the Triton repository as objects in the
bucket; nothing in a local `mlflow.db`, `mlruns` or `mlartifacts`, neither where champion ran nor
where the server runs.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import invoke
from servers import MlflowServer, access_log_requests, moto_s3, postgres_database, postgres_unavailable, query, s3_server_env

pytestmark = pytest.mark.slow
NAME = "digits-cnn"
LOCAL_STORES = ("mlflow.db", "mlruns", "mlartifacts")
EPOCHS = 2
# The same code path as any run, in few seconds: two epochs, Gate 2 on 20 samples.
QUICK = ["--quiet", "--epochs", str(EPOCHS), "--set", "export.num_samples=20"]


@dataclass
class Production:
    url: str
    database: str
    bucket: str
    s3: Any
    server_dir: Path
    server_log: Path


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Production]:
    """PostgreSQL database + moto S3 bucket + `mlflow server` over both, for the module."""
    if reason := postgres_unavailable():
        pytest.skip(reason)
    pytest.importorskip("moto.server", reason="moto[server] provides the loopback S3 endpoint")
    boto3 = pytest.importorskip("boto3")
    root = tmp_path_factory.mktemp("production")
    server_dir = root / "server"
    server_dir.mkdir()
    with pytest.MonkeyPatch.context() as mp, moto_s3(mp) as endpoint, postgres_database() as database:
        mp.setenv("AWS_ENDPOINT_URL", endpoint)  # for `deploy triton` to s3://, as a Triton pod is configured
        s3 = boto3.client("s3", endpoint_url=endpoint)
        bucket = f"mlflow-{uuid.uuid4().hex[:8]}"
        s3.create_bucket(Bucket=bucket)
        server = MlflowServer(
            database, f"s3://{bucket}/mlflow", env=s3_server_env(endpoint), log=root / "server.log", cwd=server_dir
        )
        with server:
            yield Production(server.url, database, bucket, s3, server_dir, root / "server.log")


def objects(p: Production, prefix: str) -> list[str]:
    pages = p.s3.get_paginator("list_objects_v2").paginate(Bucket=p.bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.fixture
def forget_server() -> Iterator[None]:
    """In-process commands point MLflow at the server: the next tests must not talk to it."""
    import mlflow

    yield
    mlflow.set_tracking_uri(None)


def test_run_and_deploy_against_postgres_and_s3(
    production: Production, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forget_server: None
) -> None:
    p = production
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", p.url)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    run = invoke("run", *QUICK)
    assert run.exit_code == 0, run.stderr
    v = run.values
    assert v["RESULT"] == "passed" and v["GATE2_RESULT"] == "passed"
    requests = access_log_requests(p.server_log)  # the run's, before the deploy
    deployed = invoke("deploy", "triton", "--model-name", NAME, "--repository", f"s3://{p.bucket}/triton", "--quiet")
    assert deployed.exit_code == 0, deployed.stderr
    assert deployed.values == {"TRITON_MODEL_DIR": f"s3://{p.bucket}/triton/{NAME}", "TRITON_MODEL_VERSION": v["ONNX_MODEL_VERSION"]}

    # Rows in PostgreSQL: the runs, the registered models, their versions and aliases.
    runs = dict(query(p.database, "select run_uuid, status from runs"))
    assert runs[v["RUN_ID"]] == "FINISHED" and runs[v["EXPORT_RUN_ID"]] == "FINISHED"
    assert {NAME, f"{NAME}-onnx"} <= {name for (name,) in query(p.database, "select name from registered_models")}
    versions = {(n, str(ver)): r for n, ver, r in query(p.database, "select name, version, run_id from model_versions")}
    assert versions[(NAME, v["MODEL_VERSION"])] == v["RUN_ID"]
    assert versions[(f"{NAME}-onnx", v["ONNX_MODEL_VERSION"])] == v["EXPORT_RUN_ID"]
    aliases = {(n, a): str(ver) for n, a, ver in query(p.database, "select name, alias, version from registered_model_aliases")}
    assert aliases[(NAME, "champion")] == v["MODEL_VERSION"] and aliases[(f"{NAME}-onnx", "deploy")] == v["ONNX_MODEL_VERSION"]
    epochs = query(p.database, "select count(distinct step) from metrics where run_uuid = %s and key = 'val_accuracy'", v["RUN_ID"])
    assert epochs == [(EPOCHS,)]

    # Objects in the bucket: the run's artefacts, both logged models, the Triton repository.
    stored = objects(p, "mlflow/")
    run_files = {k.split(f"/{v['RUN_ID']}/artifacts/", 1)[1] for k in stored if f"/{v['RUN_ID']}/artifacts/" in k}
    assert {"config.yaml", "evaluation.json", "gate_report.json", "model_card/model_card.md"} <= run_files
    export_files = {k.rsplit("/", 1)[1] for k in stored if f"/{v['EXPORT_RUN_ID']}/artifacts/" in k}
    assert {"metadata.json", "validation_report.json"} <= export_files
    models = [k for k in stored if "/models/m-" in k]
    assert any(k.endswith("/data/model.pth") for k in models) and any(k.endswith("/model.onnx") for k in models)
    triton = set(objects(p, f"triton/{NAME}/"))
    assert {f"triton/{NAME}/config.pbtxt", f"triton/{NAME}/{v['ONNX_MODEL_VERSION']}/model.onnx"} <= triton
    logged_onnx = next(k for k in models if k.endswith("/model.onnx"))
    body = p.s3.get_object(Bucket=p.bucket, Key=logged_onnx)["Body"].read()
    assert p.s3.get_object(Bucket=p.bucket, Key=f"triton/{NAME}/{v['ONNX_MODEL_VERSION']}/model.onnx")["Body"].read() == body

    # No request the run could do without: each model downloaded once for the stages that read it
    # (through the server, not presigned), run artefacts read without `runs:/` look-ups.
    downloads = [path for method, path in requests if method == "GET" and "/mlflow-artifacts/artifacts/" in path]
    assert len([d for d in downloads if d.endswith("/data/model.pth")]) == 1, downloads
    assert len([d for d in downloads if d.endswith("/model.onnx")]) == 1, downloads
    assert not [path for _, path in requests if "/presigned/" in path or path.endswith("/logged-models/search")]

    # Nothing local: not where champion ran, not where the server runs.
    for folder in (tmp_path, p.server_dir):
        assert not [name for name in LOCAL_STORES if (folder / name).exists()], folder
