"""How much `champion serve` takes on: items per batch and request, batching delay, body and tensor sizes.

The defaults are the CLI's defaults (`champion serve --help` reads them from `Limits()`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from champion.errors import ConfigError


@dataclass
class Limits:
    max_batch_size: int = 64  # items per ONNX Runtime run, and per request
    max_delay_ms: float = 2.0  # the longest the first request of a batch waits for others on their way
    max_request_bytes: int = 64 * 1024**2
    max_elements: int = 16 * 1024**2  # tensor elements per request (decoded image pixels included)

    def check(self) -> None:
        """Raises ConfigError, naming the CLI option, for a limit no server could run with."""
        if self.max_batch_size < 1:
            raise ConfigError(f"--max-batch-size {self.max_batch_size}: at least 1")
        if not (self.max_delay_ms >= 0 and math.isfinite(self.max_delay_ms)):
            raise ConfigError(f"--max-delay-ms {self.max_delay_ms}: 0 or more")
        if self.max_request_bytes < 1024:
            raise ConfigError(f"--max-request-bytes {self.max_request_bytes}: at least 1024")
        if self.max_elements < 1:
            raise ConfigError(f"--max-elements {self.max_elements}: at least 1")
