"""Remote sources through ingest: a download from an HTTP mirror on loopback, an S3 prefix on moto."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from champion import ingest
from champion.config import load_config

from test_download import serve, shared_mnist  # noqa: F401 - fixtures
from test_remote import endpoint, s3  # noqa: F401 - fixtures

REBUILT = {"train-images-idx3-ubyte.gz": "fec16f1520679dcd367d323fcdfc6281"}  # see shared/data/mnist/README.md


def test_mnist_source_downloads_from_the_mirror_then_uses_the_cache(shared_mnist: Path, serve, tmp_path: Path) -> None:  # noqa: F811
    server = serve(shared_mnist)
    cfg = load_config(overrides=[
        "data.source=mnist", f"data.mirror={server.url}", f"data.cache_dir={tmp_path}",
        f"data.checksums={REBUILT}".replace("'", '"'), "data.validation_split=0.1",
    ]).data  # fmt: skip
    data = ingest.prepare(cfg, seed=0)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 54000, "val": 6000, "test": 10000}
    assert len(server.requests) == 4
    again = ingest.prepare(cfg, seed=0)
    assert again.digest == data.digest and len(server.requests) == 4  # nothing fetched twice


def test_s3_source_syncs_an_image_folder(endpoint: str, s3, tmp_path: Path) -> None:  # noqa: F811
    s3.create_bucket(Bucket="images")
    rng = np.random.default_rng(0)
    for cls in ("ant", "bee"):
        for i in range(5):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(buf, "PNG")
            s3.put_object(Bucket="images", Key=f"set1/{cls}/{i}.png", Body=buf.getvalue())
    cfg = load_config(overrides=[
        "data.source=s3://images/set1", f"data.s3.endpoint_url={endpoint}", f"data.cache_dir={tmp_path}",
        "data.channels=3", "data.image_size=[8,8]",
    ]).data  # fmt: skip
    data = ingest.prepare(cfg, seed=0)
    assert data.classes == ["ant", "bee"] and data.images.shape == (10, 3, 8, 8)
    assert data.source == "s3://images/set1"  # recorded as named, not as the cache folder
