"""Embedded-store specifics: reopening from disk, crash repair, HNSW."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hybrid.backends.embedded import EmbeddedBackend
from hybrid.config import VectorSettings
from hybrid.indexing import IndexJob, run_index
from hybrid.search import SearchConfig, Searcher

QUERIES = ["ocean tides", "bread yeast", "fast lookups with keys"]


def _all_modes(backend: Any, encoder: Any) -> list[list[tuple[str, float]]]:
    searcher = Searcher(backend, "idx", encoder)
    out = []
    for mode in ("bm25", "dense", "hybrid"):
        for hits in searcher.search(QUERIES, SearchConfig(mode=mode, k=5)):  # type: ignore[arg-type]
            out.append([(h.id, round(h.score, 6)) for h in hits])
    return out


def test_reopen_from_disk_gives_identical_results(tmp_path: Path, tiny_encoder: Any, beir_small: Path) -> None:
    first = EmbeddedBackend(tmp_path / "store")
    run_index(IndexJob(corpus=beir_small, index="idx"), first, tiny_encoder)
    before = _all_modes(first, tiny_encoder)
    first.close()
    reopened = EmbeddedBackend(tmp_path / "store")
    assert _all_modes(reopened, tiny_encoder) == before
    assert reopened.info("idx").count == 12
    reopened.close()


def test_vectors_written_without_documents_are_dropped_on_resume(
    tmp_path: Path, tiny_encoder: Any, beir_small: Path
) -> None:
    backend = EmbeddedBackend(tmp_path / "store")
    run_index(IndexJob(corpus=beir_small, index="idx", limit=4), backend, tiny_encoder)
    version = tmp_path / "store" / "idx" / backend.current("idx") / "vectors.f32"
    with version.open("ab") as fh:  # a crash between appending vectors and committing rows
        fh.write(np.ones((3, 32), dtype=np.float32).tobytes())
    stats = run_index(IndexJob(corpus=beir_small, index="idx"), backend, tiny_encoder)
    assert (stats.written, stats.count) == (8, 12)
    assert version.stat().st_size == 12 * 32 * 4
    hits = backend.knn("idx", tiny_encoder.encode_queries(["honey"]), 12)[0]
    assert sorted(h.id for h in hits) == sorted(f"d{i}" for i in range(1, 13))
    backend.close()


def test_hnsw_option_finds_the_exact_neighbours_on_small_data(
    tmp_path: Path, tiny_encoder: Any, beir_small: Path
) -> None:
    backend = EmbeddedBackend(tmp_path / "store")
    job = IndexJob(corpus=beir_small, index="idx", vectors=VectorSettings(embedded_type="hnsw"))
    run_index(job, backend, tiny_encoder)
    assert (tmp_path / "store" / "idx" / backend.current("idx") / "faiss.hnsw").is_file()
    q = tiny_encoder.encode_queries(["volcano magma"])
    hnsw = [h.id for h in backend.knn("idx", q, 5, num_candidates=50)[0]]
    # the graph is searched from the mapped file, not from a private copy (a FAISS with
    # IO_FLAG_MMAP_IFC; an older one reads it into memory, the same search)
    import faiss

    graph = str(tmp_path / "store" / "idx" / backend.current("idx") / "faiss.hnsw")
    assert (graph in Path("/proc/self/maps").read_text()) == hasattr(faiss, "IO_FLAG_MMAP_IFC")
    flat_backend = EmbeddedBackend(tmp_path / "flat")
    run_index(IndexJob(corpus=beir_small, index="idx"), flat_backend, tiny_encoder)
    assert hnsw == [h.id for h in flat_backend.knn("idx", q, 5)[0]]
    backend.close()
    flat_backend.close()


def test_a_first_version_keeps_no_writer_waiting(tmp_path: Path, tiny_encoder: Any, beir_small: Path) -> None:
    """Nothing is swapped out by an index's first version: a writer with a grace period must
    not wait it out (hybrid index sat for 120 s after building a new index)."""
    backend = EmbeddedBackend(tmp_path / "store")
    backend.retirement.grace_s = 120
    run_index(IndexJob(corpus=beir_small, index="idx"), backend, tiny_encoder)
    assert not backend.retirement.pending
    run_index(IndexJob(corpus=beir_small, index="idx", recreate=True), backend, tiny_encoder)
    assert backend.retirement.pending  # the first version now waits out its grace
    for timer in backend.retirement._timers:  # not 120 s of this test
        timer.cancel()
    backend.close()
