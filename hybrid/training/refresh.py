"""Refresh, the ANCE-style step SimANS relies on: re-embed the corpus into a new version.

The corpus is re-encoded into a *new* index version read from the current one (no original
corpus file needed; the embedded store keeps the documents and BM25 index and writes only
the vectors) with the encoder's settings, which the caller takes from the index's
recipe, never from the training truncation. Committing swaps it in atomically (ES alias,
embedded CURRENT file) and deletes the old version, so searches never see a half-built
index. Re-mining and the run's bookkeeping live in :mod:`hybrid.training.setup`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from hybrid.backends.base import Backend
from hybrid.config import LexicalSettings, VectorSettings
from hybrid.encoder import Encoder
from hybrid.indexing import IndexJob, run_index

log = logging.getLogger(__name__)


def reembed(
    backend: Backend, index: str, encoder: Encoder, batch_size: int = 256, *, vectors_only: bool = True
) -> tuple[str, int, float]:
    """Write the current version's documents with ``encoder``'s vectors as a new version.

    ``vectors_only=False`` writes the documents anew even where the backend could keep them
    (the baseline of ``bench/refresh.py``). Returns ``(version, documents, seconds)``.
    """
    info = backend.info(index)
    lexical = LexicalSettings(**_settings(info.extra, "lexical"))
    vectors = VectorSettings(**_settings(info.extra, "vectors"))
    started = time.perf_counter()
    docs = (doc for batch in backend.iter_documents(index) for doc in batch)
    job = IndexJob(
        corpus=None,
        index=index,
        recreate=True,
        batch_size=batch_size,
        lexical=lexical,
        vectors=vectors,
        vectors_only=vectors_only,
    )
    stats = run_index(job, backend, encoder, documents=docs)
    log.info("refresh: %s now serves %d documents embedded by %s", stats.version, stats.count, encoder.name)
    return stats.version, stats.count, time.perf_counter() - started


def dev_ndcg(backend: Backend, index: str, dev: tuple[Path, Path], encoder: Encoder | None = None) -> float:
    """Dense nDCG@10 of ``index`` on dev queries and qrels (queries by the index's model)."""
    from hybrid.evaluation.evaluate import EvalJob, run_eval
    from hybrid.search import SearchConfig, Searcher

    job = EvalJob(index=index, queries=dev[0], qrels=dev[1], search=SearchConfig(mode="dense", k=100))
    report = run_eval(job, backend, Searcher(backend, index, encoder, batch=True))
    return float(report.metrics["ndcg@10"])


def _settings(extra: dict[str, Any], key: str) -> dict[str, Any]:
    value = extra.get(key) or {}
    return dict(value) if isinstance(value, dict) else {}
