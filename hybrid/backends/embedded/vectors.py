"""FAISS inner-product search over a version's vectors (flat, or HNSW as an option)."""

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
        self.index: Any
        hnsw = version_dir / HNSW_FILE
        if self.kind == "hnsw" and hnsw.is_file():
            self.index = faiss.read_index(str(hnsw))
        else:
            self.kind = "flat"
            self.index = faiss.IndexFlatIP(vectors.shape[1])
            _add(self.index, vectors)

    def search(self, queries: np.ndarray, k: int, num_candidates: int | None) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, rows)`` each ``(len(queries), k)``; missing slots have row -1."""
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(k, num_candidates or 0)
        q = np.ascontiguousarray(queries, dtype=np.float32)
        scores, rows = self.index.search(q, k)
        return scores, rows


def _add(index: Any, vectors: np.ndarray) -> None:
    for start in range(0, vectors.shape[0], ADD_CHUNK):
        index.add(np.ascontiguousarray(vectors[start : start + ADD_CHUNK], dtype=np.float32))
