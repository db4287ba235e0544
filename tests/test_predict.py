"""`champion predict` and `champion evaluate` on a model shipped through the real pipeline: rows per
image in every format, unreadable files reported in their rows, the same probabilities as
`champion serve`, S3 sources on moto, and an evaluation that reproduces the recorded test accuracy.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import ShipModel, Shipped, invoke
from servers import moto_s3, start_serve

NAME = "pred-cnn"
TEST_SPLIT = "data.test_split=0.2"


@pytest.fixture(scope="module")
def shipped(shipped_model: ShipModel) -> Shipped:
    """`champion run` for 1 epoch on digits with a test split: pred-cnn-onnx v1 @deploy."""
    return shipped_model(NAME, TEST_SPLIT, "export.num_samples=20", "promotion_criteria.threshold=0.5")


@pytest.fixture(scope="module")
def test_split(shipped: Shipped) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The test split the run held out, as ingest prepared it (uint8 at the model's size)."""
    from champion import ingest
    from champion.config import load_config

    cfg = load_config(None, [TEST_SPLIT])
    data = ingest.prepare(cfg.data, cfg.training.seed, splits=("test",))
    x, y = data.split("test")
    return x, y, data.classes


def save_pngs(x: np.ndarray, y: np.ndarray, classes: list[str], root: Path) -> list[Path]:
    """One lossless PNG per image at the model's size (decoding gives back the same pixels), in class folders."""
    from PIL import Image

    paths = []
    for i, (img, label) in enumerate(zip(x, y)):
        path = root / classes[label] / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0]).save(path)
        paths.append(path)
    return paths


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_a_folder_gives_one_row_per_image_and_a_corrupt_file_its_reason(shipped: Shipped, test_split, tmp_path: Path) -> None:
    x, y, classes = test_split
    paths = save_pngs(x[:30], y[:30], classes, tmp_path / "images")
    (tmp_path / "images" / "nested" / "deeper").mkdir(parents=True)
    broken = tmp_path / "images" / "nested" / "deeper" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "images" / "notes.md").write_text("not an image: not listed")

    result = invoke("predict", str(tmp_path / "images"), "--top-k", "3", "--output", "-")
    assert result.exit_code == 5, result.stderr  # every row written, one file unreadable
    rows = read_csv(result.stdout)
    assert [r["path"] for r in rows] == sorted([str(p) for p in paths] + [str(broken)], key=lambda p: Path(p).relative_to(tmp_path).parts)
    bad = [r for r in rows if r["error"]]
    assert [r["path"] for r in bad] == [str(broken)] and bad[0]["label_1"] == "" and "cannot identify" in bad[0]["error"]
    good = [r for r in rows if not r["error"]]
    for r in good:
        probs = [float(r[f"probability_{i}"]) for i in (1, 2, 3)]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
        assert {r[f"label_{i}"] for i in (1, 2, 3)} <= set(classes)
    right = sum(r["label_1"] == Path(r["path"]).parent.name for r in good)
    assert right >= 0.8 * len(good), f"{right} of {len(good)} right: the rows do not follow the images"


def test_formats_agree_and_a_list_file_reports_missing_paths(shipped: Shipped, test_split, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    x, y, classes = test_split
    paths = save_pngs(x[:10], y[:10], classes, tmp_path / "images")
    listing = tmp_path / "list.txt"
    listing.write_text("# two images and one that is not there\n" + "\n".join(str(p.relative_to(tmp_path)) for p in paths[:2]) + "\n\nmissing.png\n")
    as_csv = invoke("predict", str(listing), "--top-k", "2", "--output", str(tmp_path / "p.csv"))
    assert as_csv.exit_code == 5 and as_csv.values["PREDICTIONS"] == str(tmp_path / "p.csv") and as_csv.values["UNREADABLE"] == "1", as_csv.stderr
    rows = read_csv((tmp_path / "p.csv").read_text())
    assert [r["path"] for r in rows] == [str(p.relative_to(tmp_path)) for p in paths[:2]] + ["missing.png"]
    assert "No such file" in rows[2]["error"] or "FileNotFoundError" in rows[2]["error"]

    for fmt, out in (("jsonl", "p.jsonl"), ("parquet", "p.parquet")):
        got = invoke("predict", str(listing), "--top-k", "2", "--output", str(tmp_path / out))
        assert got.exit_code == 5, got.stderr
        if fmt == "jsonl":
            other = [json.loads(line) for line in (tmp_path / out).read_text().splitlines()]
        else:
            other = pq.read_table(tmp_path / out).to_pylist()
        assert [o["path"] for o in other] == [r["path"] for r in rows]
        assert [o["label_1"] for o in other] == [r["label_1"] or None for r in rows]
        for o, r in zip(other[:2], rows[:2]):
            assert o["probability_1"] == pytest.approx(float(r["probability_1"]), rel=1e-6)
    assert not list(tmp_path.glob(".tmp-*")), "a temporary output file was left behind"


def test_predict_gives_the_probabilities_serve_gives(shipped: Shipped, test_split, tmp_path: Path) -> None:
    from champion.metrics import softmax

    x, y, classes = test_split
    paths = save_pngs(x[:12], y[:12], classes, tmp_path / "images")
    out = tmp_path / "p.jsonl"
    result = invoke("predict", str(tmp_path / "images"), "--top-k", str(len(classes)), "--output", str(out))
    assert result.exit_code == 0, result.stderr
    rows = {r["path"]: r for r in map(json.loads, out.read_text().splitlines())}

    server = start_serve("--quiet")
    try:
        ordered = sorted(paths, key=str)
        body = {"inputs": [{"name": "image", "shape": [len(ordered)], "datatype": "BYTES",
                            "data": [base64.b64encode(p.read_bytes()).decode() for p in ordered]}]}  # fmt: skip
        request = urllib.request.Request(f"{server.url}/v2/models/{NAME}/infer", json.dumps(body).encode(), {"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=30).read())
    finally:
        server.stop()
    logits = np.array(answer["outputs"][0]["data"], np.float32).reshape(len(ordered), len(classes))
    served = softmax(logits)
    for p, probs in zip(ordered, served):
        row = rows[str(p)]
        by_label = {row[f"label_{i}"]: row[f"probability_{i}"] for i in range(1, len(classes) + 1)}
        ours = np.array([by_label[c] for c in classes], np.float32)
        np.testing.assert_allclose(ours, probs, rtol=0, atol=1e-6)
        assert row["label_1"] == classes[int(np.argmax(probs))]


def test_an_s3_prefix_is_read_through_the_endpoint(shipped: Shipped, test_split, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("moto.server", reason="moto[server] provides the loopback S3 endpoint")
    x, y, classes = test_split
    paths = save_pngs(x[:6], y[:6], classes, tmp_path / "images")
    with moto_s3(monkeypatch) as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="shots")
        for p in paths:
            s3.put_object(Bucket="shots", Key=f"batch/{p.relative_to(tmp_path / 'images').as_posix()}", Body=p.read_bytes())
        s3.put_object(Bucket="shots", Key="batch/readme.txt", Body=b"not an image")
        result = invoke("predict", "s3://shots/batch", "--output", "-", "--quiet")
        labelled = invoke("evaluate", "s3://shots/batch", "--quiet", "--json")
    assert result.exit_code == 0, result.stderr
    rows = read_csv(result.stdout)
    assert sorted(r["path"] for r in rows) == sorted(f"s3://shots/batch/{p.relative_to(tmp_path / 'images').as_posix()}" for p in paths)
    assert all(r["label_1"] in classes and not r["error"] for r in rows)
    assert labelled.exit_code == 0, labelled.stderr
    assert json.loads(labelled.stdout)["images"] == 6


def test_evaluate_reproduces_the_recorded_test_accuracy(shipped: Shipped, test_split, tmp_path: Path) -> None:
    import mlflow

    x, y, classes = test_split
    save_pngs(x, y, classes, tmp_path / "labelled")
    recorded = mlflow.MlflowClient(shipped.tracking_uri).get_run(shipped.run_id).data.metrics["test_accuracy"]

    result = invoke("evaluate", str(tmp_path / "labelled"), "--output-dir", str(tmp_path / "report"), "--quiet")
    assert result.exit_code == 0, result.stderr
    accuracy = float(result.values["ACCURACY"])
    # The same images through ONNX instead of PyTorch: equal but for a near-tie flipped by float noise.
    assert abs(accuracy - recorded) <= 1 / len(y) + 1e-9, (accuracy, recorded)
    assert float(result.values["ACCURACY_DROP"]) == pytest.approx(recorded - accuracy, abs=1e-6)
    report = (tmp_path / "report" / "report.md").read_text()
    assert "recorded at training (test split)" in report and "| precision |" in report.replace(" precision |", " precision |")
    doc = json.loads((tmp_path / "report" / "evaluation.json").read_text())
    assert sum(map(sum, doc["confusion_matrix"])) == len(y) == doc["images"]
    assert set(doc["recorded"]["per_class"]) == set(classes)
    assert (tmp_path / "report" / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The configured data.source at its test split: the same images, without the PNG round trip.
    from_config = invoke("evaluate", "--set", TEST_SPLIT, "--output-dir", str(tmp_path / "cfg"), "--quiet")
    assert from_config.exit_code == 0, from_config.stderr
    assert from_config.values["ACCURACY"] == result.values["ACCURACY"]

    drifted = invoke("evaluate", str(tmp_path / "labelled"), "--fail-under", "1.0", "--output-dir", str(tmp_path / "r2"), "--quiet")
    assert drifted.exit_code == (6 if accuracy < 1.0 else 0), drifted.stderr
    percent = invoke("evaluate", str(tmp_path / "labelled"), "--fail-under", "95")
    assert percent.exit_code == 2 and "fraction" in percent.stderr
    users = tmp_path / "notes"
    users.mkdir()
    (users / "report.md").write_text("mine")
    refused = invoke("evaluate", str(tmp_path / "labelled"), "--output-dir", str(users), "--quiet")
    assert refused.exit_code == 2 and (users / "report.md").read_text() == "mine", refused.stderr


def test_labels_the_model_does_not_know_are_named(shipped: Shipped, test_split, tmp_path: Path) -> None:
    x, y, classes = test_split
    save_pngs(x[:4], y[:4], classes, tmp_path / "labelled")
    save_pngs(x[:2], np.zeros(2, np.int64), ["zebra"], tmp_path / "labelled")
    result = invoke("evaluate", str(tmp_path / "labelled"))
    assert result.exit_code == 2 and "['zebra']" in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_model_uris_and_missing_sources(shipped: Shipped, test_split, tmp_path: Path) -> None:
    x, y, classes = test_split
    save_pngs(x[:3], y[:3], classes, tmp_path / "images")
    by_uri = invoke("predict", str(tmp_path / "images"), "--model-uri", f"models:/{NAME}-onnx/1", "--quiet")
    by_alias = invoke("predict", str(tmp_path / "images"), "--model-name", NAME, "--alias", "deploy", "--quiet")
    assert by_uri.exit_code == 0 and by_uri.stdout == by_alias.stdout, by_uri.stderr
    torch_model = invoke("predict", str(tmp_path / "images"), "--model-uri", f"models:/{NAME}/1")
    assert torch_model.exit_code == 2 and f"models:/{NAME}-onnx@deploy" in torch_model.stderr
    missing = invoke("predict", str(tmp_path / "nowhere"), "--output", str(tmp_path / "out.csv"))
    assert missing.exit_code == 2 and "does not exist" in missing.stderr and not (tmp_path / "out.csv").exists()
