"""Refresh, the ANCE-style step SimANS relies on: re-embed the corpus, swap, re-mine.

The corpus is re-encoded with a checkpoint into a *new* index version read from the
current one (no original corpus file needed); committing swaps it in atomically (ES alias,
embedded CURRENT file) and deletes the old version, so searches never see a half-built
index. Then pools are mined again with the same checkpoint.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybrid.backends.base import Backend
from hybrid.config import LexicalSettings, VectorSettings
from hybrid.encoder import Encoder, EncoderConfig
from hybrid.indexing import IndexJob, run_index
from hybrid.mining import MineJob, run_mine

log = logging.getLogger(__name__)


@dataclass
class RefreshResult:
    version: str
    pools: Path
    documents: int
    index_seconds: float
    mine_seconds: float
    dev_ndcg10: float | None = None


def reembed(backend: Backend, index: str, encoder: Encoder, batch_size: int = 256) -> tuple[str, int, float]:
    """Write the current version's documents with ``encoder``'s vectors as a new version."""
    info = backend.info(index)
    lexical = LexicalSettings(**_settings(info.extra, "lexical"))
    vectors = VectorSettings(**_settings(info.extra, "vectors"))
    started = time.perf_counter()
    docs = (doc for batch in backend.iter_documents(index) for doc in batch)
    job = IndexJob(corpus=None, index=index, recreate=True, batch_size=batch_size, lexical=lexical, vectors=vectors)
    stats = run_index(job, backend, encoder, documents=docs)
    return stats.version, stats.count, time.perf_counter() - started


def refresh(
    backend: Backend,
    checkpoint: Path,
    mine: MineJob,
    device: str | None = None,
    dev: tuple[Path, Path] | None = None,
    remine: bool = True,
) -> RefreshResult:
    """Re-embed ``mine.index`` with ``checkpoint``, swap it in, then mine ``mine.out`` again.

    ``remine=False`` (the refresh after the last step) only re-embeds.
    """
    encoder = Encoder(EncoderConfig(model=str(checkpoint), device=device))
    version, count, index_seconds = reembed(backend, mine.index, encoder)
    log.info("refresh: %s now serves %d documents embedded by %s", version, count, checkpoint)
    started = time.perf_counter()
    if remine:
        run_mine(mine, backend, encoder)
    result = RefreshResult(version, mine.out, count, index_seconds, time.perf_counter() - started)
    if dev is not None:
        from hybrid.evaluation.evaluate import EvalJob, run_eval
        from hybrid.search import SearchConfig, Searcher

        job = EvalJob(index=mine.index, queries=dev[0], qrels=dev[1], search=SearchConfig(mode="dense", k=100))
        report = run_eval(job, backend, Searcher(backend, mine.index, encoder))
        result.dev_ndcg10 = report.metrics["ndcg@10"]
    return result


def _settings(extra: dict[str, Any], key: str) -> dict[str, Any]:
    value = extra.get(key) or {}
    return dict(value) if isinstance(value, dict) else {}
