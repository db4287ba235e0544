"""The Prometheus metrics `champion serve` exposes at /metrics: requests, errors, latency, batch sizes."""

from __future__ import annotations

# prometheus_client is imported when a server builds its metrics, not with this module: importing
# `champion.deploy.serve` (as tests and benches do) need not pay for it.


class Metrics:
    """Prometheus metrics in a registry of their own (no process-global state)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram  # lazy: see the note at the top

        self.registry = CollectorRegistry()
        self.requests = Counter("champion_serve_requests", "Inference requests received", ["model"], registry=self.registry)
        self.errors = Counter("champion_serve_errors", "Inference requests answered with an error", ["model", "status"], registry=self.registry)
        self.latency = Histogram(
            "champion_serve_request_latency_seconds", "Time from receiving an inference request to answering it",
            ["model"], registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )  # fmt: skip
        self.batch_size = Histogram(
            "champion_serve_batch_size", "Items per ONNX Runtime run", registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        )  # fmt: skip

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its Content-Type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest  # as in __init__

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
