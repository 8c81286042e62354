"""The one small protocol every search backend implements.

An index is addressed by its user-facing name (an alias on Elasticsearch, a directory on
the embedded store). Behind the name sit numbered physical versions: writing goes to the
newest version, and :meth:`IndexWriter.commit` verifies the count and makes that version
current in one atomic step, so readers never see a half-built index.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from hybrid.config import IndexSpec
from hybrid.errors import BackendError, DimensionMismatchError
from hybrid.manifest import VectorRecipe, check_same_vectors
from hybrid.types import Document, Hit, IndexInfo

VERSION_DIGITS = 6


def version_name(name: str, number: int) -> str:
    """Physical name of version ``number`` of index ``name``: ``name-v000001``."""
    return f"{name}-v{number:0{VERSION_DIGITS}d}"


def version_number(name: str, physical: str) -> int | None:
    """Inverse of :func:`version_name`; ``None`` when ``physical`` is not a version of ``name``."""
    prefix = f"{name}-v"
    tail = physical[len(prefix) :]
    if physical.startswith(prefix) and len(tail) == VERSION_DIGITS and tail.isdigit():
        return int(tail)
    return None


def split_version(physical: str) -> tuple[str, int] | None:
    """``("name", 3)`` for ``name-v000003``; ``None`` when ``physical`` names no version.

    Readers (search, get, info) accept a version's physical name wherever they accept an
    index name, so a server can pin the version it resolved while the alias moves on.
    """
    name, sep, tail = physical.rpartition("-v")
    if sep and name and len(tail) == VERSION_DIGITS and tail.isdigit():
        return name, int(tail)
    return None


class Retirement:
    """Deletes swapped-out versions ``grace_s`` seconds after a swap (at once when 0), so
    searches already pinned to them (``hybrid serve``) finish; :meth:`wait` (a backend's
    close) waits for the deletions still due."""

    def __init__(self, grace_s: float = 0.0) -> None:
        self.grace_s = grace_s
        self._timers: list[threading.Timer] = []

    def retire(self, delete: Callable[[], None]) -> None:
        if self.grace_s <= 0:
            delete()
            return
        timer = threading.Timer(self.grace_s, delete)
        timer.daemon = True
        timer.start()
        self._timers.append(timer)

    @property
    def pending(self) -> bool:
        """Some swapped-out version is still waiting for its deletion."""
        return any(timer.is_alive() for timer in self._timers)

    def wait(self) -> None:
        for timer in self._timers:
            timer.join()
        self._timers.clear()


def check_vectors(spec: IndexSpec, docs: Sequence[Document], vectors: np.ndarray) -> None:
    """Refuse a batch whose vectors do not fit the index, before anything is written."""
    if vectors.ndim != 2 or vectors.shape[0] != len(docs):
        raise BackendError(f"expected {len(docs)} vectors, got an array of shape {vectors.shape}")
    if vectors.shape[1] != spec.dims:
        raise DimensionMismatchError(
            f"vectors have {vectors.shape[1]} dimensions but index '{spec.name}' holds "
            f"{spec.dims}-d vectors; nothing was written"
        )
    if not np.isfinite(vectors).all():
        raise BackendError("vectors contain NaN or infinity; nothing was written")


def check_compatible(spec: IndexSpec, meta: dict[str, Any], name: str) -> None:
    """Refuse to add vectors to a version whose dimension or recipe they do not share."""
    dims = int(meta.get("dims", spec.dims))
    if dims != spec.dims:
        raise DimensionMismatchError(
            f"index '{name}' holds {dims}-d vectors from {meta.get('model')} but the encoder "
            f"makes {spec.dims}-d vectors; use the same model, or --recreate to rebuild"
        )
    check_same_vectors(name, VectorRecipe.from_dict(meta.get("recipe")), spec.recipe)


class IndexWriter(Protocol):
    """Writes documents and vectors into one (possibly not yet current) version."""

    spec: IndexSpec
    version: str
    resumed: bool

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` this version already holds."""
        ...

    def write(self, docs: Sequence[Document], vectors: np.ndarray) -> int:
        """Write documents with their vectors ``(len(docs), dims)``; returns how many."""
        ...

    def count(self) -> int:
        """Documents written to this version so far."""
        ...

    def commit(self, expected: int | None = None) -> int:
        """Make the version searchable and current; verify ``expected`` docs; return count."""
        ...

    def close(self) -> None:
        """Release resources without committing (a later run resumes)."""
        ...


class Backend(Protocol):
    """Search backend: Elasticsearch or the embedded Lucene + FAISS store."""

    kind: str
    # True when searches run in this process (CPU work here, not a wait on a server): the
    # two sides of a warm hybrid search then gain nothing from overlapping each other.
    in_process: bool

    def exists(self, name: str) -> bool:
        """True when ``name`` has a current version."""
        ...

    def current(self, name: str) -> str | None:
        """Physical name of the version ``name`` points at (``None`` when there is none)."""
        ...

    def open_writer(self, spec: IndexSpec, *, recreate: bool = False, vectors_only: bool = False) -> IndexWriter:
        """Writer into the version being built, resuming an unfinished one.

        With ``recreate`` a new version is started; the current one stays searchable
        until the new one commits. With ``vectors_only`` too (a refresh: the same documents
        with a new model's vectors, written in the order ``iter_documents`` gives them), a
        backend that can keeps the current version's documents and BM25 index and stores
        only the new vectors; one that cannot writes the documents anew.
        """
        ...

    def info(self, name: str) -> IndexInfo:
        """Count, dimension, model and version of the current version."""
        ...

    def count(self, name: str) -> int:
        """Documents in the current version."""
        ...

    def bm25(self, name: str, queries: Sequence[str], k: int, *, texts: bool = True) -> list[list[Hit]]:
        """BM25 top-``k`` for each query, in order; ``texts=False`` leaves title and text out
        (ids and scores only: cheaper when the hits are fused and cut first)."""
        ...

    def knn(
        self, name: str, vectors: np.ndarray, k: int, num_candidates: int | None = None, *, texts: bool = True
    ) -> list[list[Hit]]:
        """Inner-product top-``k`` for each query vector; scores are raw similarities.

        ``num_candidates`` widens the approximate search (ES num_candidates, HNSW efSearch);
        ``texts`` as in :meth:`bm25`.
        """
        ...

    def bm25_and_knn(
        self, name: str, queries: Sequence[str], vectors: np.ndarray, k: int, num_candidates: int | None = None
    ) -> tuple[list[list[Hit]], list[list[Hit]]]:
        """:meth:`bm25` and :meth:`knn` (``texts=False``) of the same queries, the sides of a
        hybrid search, at once where the backend can (one request to a server)."""
        ...

    def score(self, name: str, vectors: np.ndarray, ids: Sequence[Sequence[str]]) -> list[dict[str, float]]:
        """Exact similarity of query ``i`` to each document in ``ids[i]`` from stored vectors.

        Documents not in the index are absent from that query's result.
        """
        ...

    def get(self, name: str, ids: Sequence[str]) -> dict[str, Document]:
        """Documents by id; ids not found are absent from the result."""
        ...

    def set_query_model(self, name: str, recipe: VectorRecipe) -> None:
        """Record ``recipe`` for the current version: the same vectors (refused otherwise),
        queried by a new query model. Nothing else changes; searches pick it up."""
        ...

    def version_recipe(self, physical: str) -> dict[str, Any] | None:
        """The recipe version ``physical`` records now, read afresh (not from a cache)."""
        ...

    def iter_documents(self, name: str, batch: int = 1000) -> Iterator[list[Document]]:
        """Every document of the current version, in batches (for re-embedding)."""
        ...

    def drop(self, name: str) -> None:
        """Delete every version of ``name``."""
        ...

    def release(self, physical: str) -> None:
        """Let go of a version read by its physical name (open files, cached metadata)."""
        ...

    retirement: Retirement  # when swapped-out versions are deleted (``grace_s`` after the swap)

    def close(self) -> None:
        """Release connections, files and searchers."""
        ...
