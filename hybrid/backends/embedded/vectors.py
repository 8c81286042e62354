"""FAISS inner-product search over a version's vectors (flat, or HNSW as an option).

Flat search reads the version's memory-mapped vector file in place (``faiss.knn`` on the
mapping), and an HNSW graph is memory-mapped too (FAISS's ``IO_FLAG_MMAP_IFC``): a CLI
search or a server holds no copy of the vectors in its own memory, only the pages the
kernel caches, which every process on the machine shares.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hybrid.config import VectorSettings

ADD_CHUNK = 65536
HNSW_FILE = "faiss.hnsw"


def build_hnsw(vectors: np.ndarray, settings: VectorSettings, target: Path) -> None:
    """Build and save a FAISS HNSW (inner product) graph over ``vectors``."""
    import faiss

    index = faiss.IndexHNSWFlat(vectors.shape[1], settings.m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = settings.ef_construction
    _add(index, vectors)
    tmp = target.with_name(target.name + ".tmp")
    faiss.write_index(index, str(tmp))
    tmp.replace(target)


class VectorIndex:
    """Exact (flat) or HNSW inner-product search; rows are document row numbers."""

    def __init__(self, version_dir: Path, vectors: np.ndarray, settings: VectorSettings) -> None:
        import faiss

        self.kind = settings.embedded_type
        self.index: Any = None
        self.vectors = vectors  # the memory map: flat search reads it where it lies
        hnsw = version_dir / HNSW_FILE
        if self.kind == "hnsw" and hnsw.is_file():
            # Mapped, not read: the graph's vectors (and its links) stay in the file's pages,
            # shared by every process, instead of a private copy per process. A version's
            # files never change once committed (the graph is written beside it and renamed
            # into place), so the mapping stays valid, even after the version is deleted.
            self.index = faiss.read_index(str(hnsw), getattr(faiss, "IO_FLAG_MMAP_IFC", 0))
        else:
            self.kind = "flat"

    def search(self, queries: np.ndarray, k: int, num_candidates: int | None) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, rows)`` each ``(len(queries), k)``; missing slots have row -1."""
        import faiss

        q = np.ascontiguousarray(queries, dtype=np.float32)
        if self.kind == "hnsw":
            # per call, not on the shared index: the server's batch threads search it at once
            params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # not in faiss's stubs
            params.efSearch = max(k, num_candidates or 0)
            scores, rows = self.index.search(q, k, params=params)
            return scores, rows
        if len(self.vectors) == 0:
            return np.full((len(q), k), -np.inf, dtype=np.float32), np.full((len(q), k), -1, dtype=np.int64)
        scores, rows = faiss.knn(q, self.vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
        return scores, rows


def _add(index: Any, vectors: np.ndarray) -> None:
    for start in range(0, vectors.shape[0], ADD_CHUNK):
        index.add(np.ascontiguousarray(vectors[start : start + ADD_CHUNK], dtype=np.float32))
