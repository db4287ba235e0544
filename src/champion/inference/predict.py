"""`champion predict`: every image of a SOURCE through the shipped model, one row each, streamed."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Callable

from champion.deploy.model import ServedModel
from champion.errors import ConfigError
from champion.inference import batches, sources, writers


@dataclass
class Summary:
    images: int
    unreadable: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def run(
    model: ServedModel,
    source: str,
    output: str = "-",
    fmt: str | None = None,
    top_k: int = 1,
    batch_size: int = 64,
    workers: int | None = None,
    tick: Callable[[int], None] | None = None,
) -> Summary:
    """Write one row per image of `source` to `output` (`-`: stdout); `tick(n)` after each row.

    Raises:
        ConfigError: a bad option, or a SOURCE that does not exist or holds no image — found before
        any output is written.
    """
    if top_k < 1:
        raise ConfigError(f"--top-k {top_k}: at least 1")
    chosen = writers.output_format(output, fmt)
    listed = sources.images(source)
    first = next(listed, None)  # a missing or empty SOURCE fails here, before the output is opened
    if first is None:
        raise ConfigError(f"{source} holds no image")
    started, n, bad = time.perf_counter(), 0, 0
    k = min(top_k, len(model.labels))
    with writers.open_writer(output, chosen, k) as out:
        for p in batches.predict(model, itertools.chain([first], listed), batch_size, workers):
            out.write(writers.row(p.image.name, model.labels, p.probabilities, p.ranking, p.error, k))
            n += 1
            bad += p.probabilities is None
            if n % batch_size == 0:
                out.flush()
            if tick:
                tick(n)
    return Summary(n, bad, time.perf_counter() - started)
