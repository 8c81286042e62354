"""The HTTP API's Prometheus metrics, in a registry of each app's own (a process may serve
several apps, as the tests do)."""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from hybrid.backends.base import Backend

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST  # of the exposition /metrics answers with


class Metrics:
    """Requests by route and status, failures by kind, search latency by mode, queries per
    micro-batch and, on Elasticsearch, the documents of ``index`` still without a vector."""

    def __init__(self, backend: Backend, index: str) -> None:
        self.backend, self.index = backend, index
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "hybrid_requests", "HTTP requests by route and status", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "hybrid_search_seconds",
            "Search latency by mode (queue, encode, backend and fusion)",
            ["mode"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.batch_sizes = Histogram(
            "hybrid_batch_queries",
            "Queries per micro-batch sent to the encoder and backend",
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.errors = Counter("hybrid_errors", "Failed requests by kind", ["kind"], registry=self.registry)
        # Elasticsearch only: documents other writers added have no vector until hybrid sync runs.
        self.without_vector = (
            Gauge(
                "hybrid_documents_without_vector",
                "Documents of the served index without its active vector (hybrid sync embeds them)",
                registry=self.registry,
            )
            if backend.kind == "elasticsearch"
            else None
        )

    def request(self, route: str, status: int) -> None:
        self.requests.labels(route, str(status)).inc()

    def error(self, kind: str) -> None:
        self.errors.labels(kind).inc()

    def search(self, mode: str, seconds: float) -> None:
        self.latency.labels(mode).observe(seconds)

    def batch(self, queries: int) -> None:
        self.batch_sizes.observe(queries)

    async def exposition(self) -> bytes:
        """Every metric in Prometheus's text format, the count of documents without a vector
        taken now."""
        if self.without_vector is not None:
            from hybrid.sync import missing_count

            try:
                self.without_vector.set(await asyncio.to_thread(missing_count, self.backend, self.index))
            except Exception as exc:  # the cluster is away: the other metrics still answer
                log.warning("could not count documents without a vector: %s", type(exc).__name__)
        return generate_latest(self.registry)
