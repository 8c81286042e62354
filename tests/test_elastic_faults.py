"""Faults injected by wrapping a real client on a real node (no mocks of ES itself)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hybrid.indexing import IndexJob, run_index

pytestmark = pytest.mark.es


class RejectFirstBulks:
    """Proxy over a real client whose first ``n`` bulk requests get HTTP 429."""

    def __init__(self, real: Any, n: int) -> None:
        self.real = real
        self.state = {"left": n, "rejected": 0}

    def options(self, **kwargs: Any) -> RejectFirstBulks:
        proxy = RejectFirstBulks(self.real.options(**kwargs), 0)
        proxy.state = self.state
        return proxy

    def bulk(self, *args: Any, **kwargs: Any) -> Any:
        from elastic_transport import ApiResponseMeta, HttpHeaders, NodeConfig
        from elasticsearch import ApiError

        if self.state["left"] > 0:
            self.state["left"] -= 1
            self.state["rejected"] += 1
            meta = ApiResponseMeta(
                status=429,
                http_version="1.1",
                headers=HttpHeaders(),
                duration=0.0,
                node=NodeConfig("http", "127.0.0.1", 9200),
            )
            raise ApiError("es_rejected_execution_exception", meta=meta, body={"status": 429})
        return self.real.bulk(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_bulk_429_is_retried_with_backoff(es_backend: Any, es_prefix: str, tiny_encoder: Any, beir_small: Path) -> None:
    flaky = RejectFirstBulks(es_backend.client, 2)
    es_backend.client = flaky
    stats = run_index(IndexJob(corpus=beir_small, index=f"{es_prefix}-flaky"), es_backend, tiny_encoder)
    es_backend.client = flaky.real
    assert flaky.state["rejected"] == 2
    assert (stats.written, stats.count) == (12, 12)


def test_rejected_documents_raise_and_keep_the_alias(
    es_backend: Any, es_prefix: str, tiny_encoder: Any, beir_small: Path
) -> None:
    from hybrid.errors import BackendError

    name = f"{es_prefix}-keep"
    run_index(IndexJob(corpus=beir_small, index=name), es_backend, tiny_encoder)
    writer = es_backend.open_writer(_spec(name, tiny_encoder), recreate=True)
    import numpy as np

    from hybrid.types import Document

    bad = np.full((1, 32), 0.5, dtype=np.float32)  # not unit length: dot_product rejects it
    with pytest.raises(BackendError, match="rejected by"):
        writer.write([Document(id="bad", text="x")], bad)
    assert es_backend.current(name).endswith("v000001")
    assert es_backend.count(name) == 12


def _spec(name: str, encoder: Any) -> Any:
    from hybrid.config import IndexSpec

    return IndexSpec(name=name, dims=encoder.dims, model=encoder.name, normalized=True)


def test_msearch_items_rejected_by_an_overloaded_node_are_retried(tiny_encoder: Any, beir_small: Path) -> None:
    """A real node with a one-thread, one-slot search pool rejects (429) most items of a
    large multi-search; every query still gets its hits, equal to an unloaded search's."""
    from hybrid.backends.elastic import ElasticBackend
    from hybrid.config import ElasticConfig
    from hybrid.search import SearchConfig, Searcher
    from tests import es_node

    tight = {"thread_pool.search.size": "1", "thread_pool.search.queue_size": "1"}
    node = es_node.start(es_node.ES9, heap="512m", extra=tight)
    try:
        backend = ElasticBackend(ElasticConfig(url=str(node["url"]), request_timeout=60))
        run_index(IndexJob(corpus=beir_small, index="busy"), backend, tiny_encoder)
        queries = ["ocean tides moon", "bread yeast", "solar panels", "honey bees"] * 30
        config = SearchConfig(mode="bm25", k=3)
        searcher = Searcher(backend, "busy", tiny_encoder)
        loaded = searcher.search(queries, config)
        assert backend.rejected_retries > 0  # the node did reject items: the retry was exercised
        calm = [searcher.search([q], config)[0] for q in queries[:4]]
        assert [[h.id for h in row] for row in loaded[:4]] == [[h.id for h in row] for row in calm]
        assert all(loaded[i] == loaded[i % 4] for i in range(len(queries)))
        backend.close()
    finally:
        es_node.stop(node)
