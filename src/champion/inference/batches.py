"""Images through the shipped model: decoded in parallel, run through ONNX Runtime in batches,
yielded in input order with their probabilities, or the reason an image could not be read.

The work in flight is bounded (`PREFETCH` batches being decoded while one runs), so memory stays
flat however many images a source holds. Decoding is `champion.ingest.decode` with the model's
recorded preprocessing, then uint8 to [0, 1]: exactly what `champion serve` does with an image file
(see `champion.deploy.prepare`), so the two give the same probabilities for the same file.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np

from champion.deploy.model import ServedModel
from champion.errors import ConfigError
from champion.inference.sources import Image
from champion.metrics import softmax

PREFETCH = 2  # batches decoding while one runs: enough to keep ONNX Runtime fed, no more held


@dataclass
class Prediction:
    image: Image
    probabilities: np.ndarray | None  # (classes,) float32; None when the image could not be read
    ranking: np.ndarray | None = None  # class indices, most probable first (ties: the lower index first)
    error: str = ""  # why it could not be read


def predict(model: ServedModel, images: Iterable[Image], batch_size: int = 64, workers: int | None = None) -> Iterator[Prediction]:
    """One Prediction per image, in the order given.

    Raises:
        ConfigError: the model takes no image (its graph's input is not one image tensor).
    """
    from champion.ingest.decode import decode, set_pixel_limit  # lazy: Pillow comes with it

    pre = model.preprocessing
    if pre is None:
        raise ConfigError(f"{model.registry_name} v{model.version} does not take an image tensor, so it cannot classify image files")
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: at least 1")
    set_pixel_limit(pre.max_pixels)
    input_name = model.inputs[0].name

    def load(image: Image) -> tuple[np.ndarray | None, str]:
        try:
            return decode(image.open(), pre.image_size, pre.channels, pre.resize, pre.max_pixels)
        except Exception as exc:  # noqa: BLE001 - a file that cannot be fetched or opened is that row's reason
            return None, f"{type(exc).__name__}: {exc}"

    def load_all(chunk: list[Image]) -> list[tuple[np.ndarray | None, str]]:
        return [load(image) for image in chunk]

    # One task per worker per batch, not one per image: a future per image cost as much as the decoding.
    workers = workers or min(8, (os.cpu_count() or 1) * 2)  # decoders release the GIL
    pending: deque[tuple[list[Image], list[Future]]] = deque()
    source = iter(images)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="champion-decode") as pool:

        def submit() -> bool:
            chunk = list(islice(source, batch_size))
            if chunk:
                step = -(-len(chunk) // workers)
                pending.append((chunk, [pool.submit(load_all, chunk[i : i + step]) for i in range(0, len(chunk), step)]))
            return bool(chunk)

        while len(pending) < PREFETCH + 1 and submit():
            pass
        while pending:
            chunk, futures = pending.popleft()
            submit()  # the next batch decodes while this one runs
            yield from _run(model.session, input_name, chunk, [d for f in futures for d in f.result()])


def probabilities_of(session: Any, input_name: str, images: np.ndarray) -> np.ndarray:
    """The model's probabilities for uint8 (N, C, H, W) images: scaled to [0, 1] in float32, as training's
    evaluate.to_float did (the graph normalises), run in one batch, softmax per row."""
    return softmax(session.run(None, {input_name: images.astype(np.float32) / np.float32(255)})[0])


def _run(session: Any, input_name: str, chunk: list[Image], decoded: list[tuple[np.ndarray | None, str]]) -> Iterator[Prediction]:
    good = [pixels for pixels, _ in decoded if pixels is not None]
    probabilities = rankings = iter(())
    if good:
        scores = probabilities_of(session, input_name, np.stack(good))
        probabilities, rankings = iter(scores), iter(np.argsort(-scores, axis=1, kind="stable"))  # one sort per batch
    for image, (pixels, reason) in zip(chunk, decoded):
        yield Prediction(image, next(probabilities), next(rankings)) if pixels is not None else Prediction(image, None, None, reason)
