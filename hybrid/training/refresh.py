"""Refresh, the ANCE-style step SimANS relies on: re-embed the corpus into a new version.

The corpus is re-encoded into a *new* index version read from the current one (no original
corpus file needed; the embedded store keeps the documents and BM25 index and writes only
the vectors) with the encoder's settings, which the caller takes from the index's
recipe, never from the training truncation. Committing swaps it in atomically (ES alias,
embedded CURRENT file) and deletes the old version, so searches never see a half-built
index. Re-mining and the run's bookkeeping live in :mod:`hybrid.training.setup`.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hybrid.backends.base import Backend
from hybrid.config import LexicalSettings, VectorSettings
from hybrid.encoder import Encoder
from hybrid.errors import HybridError
from hybrid.indexing import IndexJob, batched, run_index
from hybrid.types import Document

log = logging.getLogger(__name__)

SHARE_VECTORS, SHARE_IDS, SHARE_DONE = "vectors.f32", "ids.jsonl", "done.json"


def reembed(
    backend: Backend,
    index: str,
    encoder: Encoder,
    batch_size: int = 256,
    *,
    vectors_only: bool = True,
    shares: Sequence[Path] = (),
) -> tuple[str, int, float]:
    """Write the current version's documents with ``encoder``'s vectors as a new version.

    ``vectors_only=False`` writes the documents anew even where the backend could keep them
    (the baseline of ``bench/refresh.py``). ``shares``: folders written by
    :func:`encode_share` (one per process, in order) that together hold every document's
    vector from this same encoder; they are written instead of encoding here, each
    document checked against its row. Returns ``(version, documents, seconds)``.
    """
    info = backend.info(index)
    lexical = LexicalSettings(**_settings(info.extra, "lexical"))
    vectors = VectorSettings(**_settings(info.extra, "vectors"))
    started = time.perf_counter()
    docs = (doc for batch in backend.iter_documents(index) for doc in batch)
    if shares:
        encoder = _Shared(encoder, shares, backend.count(index))  # type: ignore[assignment]
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


def encode_share(
    backend: Backend, index: str, encoder: Encoder, part: tuple[int, int], folder: Path, batch_size: int = 256
) -> int:
    """Embed documents ``[start, end)`` of ``index``'s current version (in the order
    ``iter_documents`` gives them) into ``folder``: this process's share of a refresh.

    Writes ``vectors.f32`` (rows in order), ``ids.jsonl`` and, last, ``done.json``.
    """
    start, end = part
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    count = 0
    with (folder / SHARE_VECTORS).open("wb") as vec, (folder / SHARE_IDS).open("w") as ids:
        for batch in batched(_slice(backend.iter_documents(index), start, end), batch_size):
            vec.write(np.ascontiguousarray(encoder.encode_passages(batch), dtype=np.float32).tobytes())
            ids.write("".join(json.dumps(d.id) + "\n" for d in batch))
            count += len(batch)
    (folder / SHARE_DONE).write_text(json.dumps({"start": start, "end": end, "count": count, "dims": encoder.dims}))
    return count


class _Shared:
    """The encoder's interface over vectors other processes computed (see :func:`encode_share`)."""

    def __init__(self, encoder: Encoder, shares: Sequence[Path], expected: int) -> None:
        self.encoder, self.dims, self.name, self.settings = encoder, encoder.dims, encoder.name, encoder.settings
        done = [json.loads((f / SHARE_DONE).read_text()) if (f / SHARE_DONE).is_file() else None for f in shares]
        total = sum(d["count"] for d in done if d)
        if any(d is None for d in done) or total != expected or any(d["dims"] != self.dims for d in done if d):
            raise HybridError(
                f"refresh shares are incomplete ({total} of {expected} documents in {len(shares)} shares); "
                "resume the run to redo the refresh"
            )
        self._rows = self._read(shares)

    def recipe(self) -> Any:
        return self.encoder.recipe()

    def _read(self, shares: Sequence[Path]) -> Iterator[tuple[str, np.ndarray]]:
        for folder in shares:
            vectors = np.memmap(folder / SHARE_VECTORS, dtype=np.float32, mode="r").reshape(-1, self.dims)
            with (folder / SHARE_IDS).open() as ids:
                for row, line in enumerate(ids):
                    yield json.loads(line), vectors[row]

    def encode_passages(self, docs: Sequence[Document]) -> np.ndarray:
        out = np.empty((len(docs), self.dims), dtype=np.float32)
        for i, doc in enumerate(docs):
            found, vector = next(self._rows, (None, None))
            if found != doc.id:
                raise HybridError(
                    f"refresh shares are out of step with the index: document {doc.id!r} where a share holds "
                    f"{found!r}; resume the run to redo the refresh"
                )
            out[i] = vector
        return out


def _slice(batches: Iterable[list[Document]], start: int, end: int) -> Iterator[Document]:
    position = 0
    for batch in batches:
        if position + len(batch) <= start:
            position += len(batch)
            continue
        for doc in batch:
            if position >= end:
                return
            if position >= start:
                yield doc
            position += 1
        if position >= end:
            return


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
