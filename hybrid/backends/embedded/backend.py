"""Embedded backend: Lucene BM25 (Anserini) + FAISS + SQLite, in one directory per index."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from hybrid.backends.base import Retirement, check_vectors, split_version, version_name, version_number
from hybrid.backends.embedded.lucene import LuceneSearcher, build_lucene
from hybrid.backends.embedded.store import VersionStore, write_atomic
from hybrid.backends.embedded.vectors import HNSW_FILE, VectorIndex, build_hnsw
from hybrid.backends.locks import FileLock
from hybrid.config import IndexSpec, LexicalSettings, VectorSettings, validate_index_name
from hybrid.errors import BackendError, CountMismatchError, DimensionMismatchError, IndexNotFoundError
from hybrid.manifest import VectorRecipe, check_same_vectors
from hybrid.types import Document, Hit, IndexInfo

log = logging.getLogger(__name__)
WRITE_LOCK = ".write.lock"
CURRENT = "CURRENT"


T = TypeVar("T")


class _OpenVersion:
    """A committed version opened for search: docs, Lucene searcher, FAISS index."""

    def __init__(self, path: Path, java_home: str | None) -> None:
        self.path = path
        meta = _read_meta(path)
        self.meta = meta
        self.lexical = LexicalSettings(**meta["lexical"])
        self.vector_settings = VectorSettings(**meta["vectors"])
        self.store = VersionStore(path, int(meta["dims"]))
        self.java_home = java_home
        self._lucene: LuceneSearcher | None = None
        self._faiss: VectorIndex | None = None

    @property
    def lucene(self) -> LuceneSearcher:
        if self._lucene is None:
            try:
                self._lucene = LuceneSearcher(self.path / "lucene", self.lexical, self.java_home)
            except Exception as exc:  # a version deleted before its first BM25 search: the JVM's error
                if (self.path / "lucene").is_dir():
                    raise
                raise BackendError(f"version {self.path.name} was deleted before it was searched") from exc
        return self._lucene

    @property
    def faiss(self) -> VectorIndex:
        if self._faiss is None:
            try:
                self._faiss = VectorIndex(self.path, self.store.vectors(), self.vector_settings)
            except OSError as exc:
                raise BackendError(f"version {self.path.name} was deleted before it was searched") from exc
        return self._faiss

    def close(self) -> None:
        if self._lucene is not None:
            self._lucene.close()
        self.store.close()


class EmbeddedBackend:
    """:class:`~hybrid.backends.base.Backend` stored under one directory on local disk."""

    kind = "embedded"
    in_process = True  # Lucene in this process's JVM, FAISS on its threads

    def __init__(self, root: Path, java_home: str | None = None) -> None:
        self.root = root
        self.java_home = java_home
        self._open: dict[str, _OpenVersion] = {}
        self._lock = threading.Lock()
        self.retirement = Retirement()  # set grace_s to keep a swapped-out version a while

    # -- names and versions -------------------------------------------------
    def index_dir(self, name: str) -> Path:
        validate_index_name(name)
        return self.root / name

    def current(self, name: str) -> str | None:
        pointer = self.index_dir(name) / CURRENT
        return pointer.read_text().strip() if pointer.is_file() else None

    def versions(self, name: str) -> list[str]:
        base = self.index_dir(name)
        if not base.is_dir():
            return []
        named = [(version_number(name, p.name), p.name) for p in base.iterdir() if p.is_dir()]
        return [v for n, v in sorted((n, v) for n, v in named if n is not None)]

    def exists(self, name: str) -> bool:
        return self.current(name) is not None

    def _version(self, name: str) -> _OpenVersion:
        """The current version opened for search; reopened when CURRENT has moved."""
        current = self.current(name)
        if current is None:
            pinned = self._pinned(name)
            if pinned is not None:
                return pinned
            raise IndexNotFoundError(
                f"index '{name}' not found in {self.root}; create it with: hybrid index CORPUS --index {name}"
            )
        with self._lock:
            opened = self._open.get(name)
            if opened is None or opened.path.name != current:
                opened = self._open_current(name, current)
                self._open[name] = opened
            return opened

    def _pinned(self, physical: str) -> _OpenVersion | None:
        """A committed version opened by its physical name; it stays open (and readable,
        even once a later commit deletes its files) until :meth:`release`."""
        parts = split_version(physical)
        if parts is None:
            return None
        with self._lock:
            opened = self._open.get(physical)
            if opened is None:
                path = self.index_dir(parts[0]) / physical
                if not _committed(path):  # missing, or never committed
                    return None
                try:
                    opened = _OpenVersion(path, self.java_home)
                except (BackendError, OSError, sqlite3.Error):
                    return None  # deleted while opening
                self._open[physical] = opened
            return opened

    def release(self, physical: str) -> None:
        """Close a version opened by its physical name (see :meth:`_pinned`)."""
        with self._lock:
            opened = self._open.pop(physical, None) if split_version(physical) else None
        if opened is not None:
            opened.close()

    def _open_current(self, name: str, current: str) -> _OpenVersion:
        try:
            return _OpenVersion(self.index_dir(name) / current, self.java_home)
        except (BackendError, OSError, sqlite3.Error):
            # Another process may have swapped versions and deleted this one just now.
            moved = self.current(name)
            if moved is None or moved == current:
                raise
            return _OpenVersion(self.index_dir(name) / moved, self.java_home)

    # -- writing ------------------------------------------------------------
    def open_writer(
        self, spec: IndexSpec, *, recreate: bool = False, vectors_only: bool = False
    ) -> EmbeddedWriter | VectorsOnlyWriter:
        base = self.index_dir(spec.name)
        base.mkdir(parents=True, exist_ok=True)
        lock = FileLock(base / WRITE_LOCK, spec.name)  # before anything is deleted: one writer at a time
        try:
            return self._open_writer(spec, recreate, vectors_only, lock)
        except BaseException:
            lock.release()
            raise

    def _open_writer(
        self, spec: IndexSpec, recreate: bool, vectors_only: bool, lock: FileLock
    ) -> EmbeddedWriter | VectorsOnlyWriter:
        base = self.index_dir(spec.name)
        current = self.current(spec.name)
        for unfinished in self.versions(spec.name):
            # an interrupted refresh is never resumed by an append (it shares the current
            # version's documents); a refresh starts anew anyway
            meta_file = base / unfinished / "meta.json"
            if unfinished != current and meta_file.is_file() and json.loads(meta_file.read_text()).get("vectors_only"):
                shutil.rmtree(base / unfinished, ignore_errors=True)
        versions = self.versions(spec.name)
        newest = versions[-1] if versions else None
        if newest is not None and not recreate:
            meta = _read_meta(base / newest)
            if int(meta["dims"]) != spec.dims:
                raise DimensionMismatchError(
                    f"index '{spec.name}' holds {meta['dims']}-d vectors from {meta['model']} but the "
                    f"encoder makes {spec.dims}-d vectors; use the same model, or --recreate to rebuild"
                )
            check_same_vectors(spec.name, VectorRecipe.from_dict(meta.get("recipe")), spec.recipe)
            return EmbeddedWriter(self, spec, base / newest, resumed=True, lock=lock)
        for stale in versions:
            if stale != current:
                shutil.rmtree(base / stale)
        number = (version_number(spec.name, newest) or 0) + 1 if newest else 1
        path = base / version_name(spec.name, number)
        path.mkdir()
        meta = {
            "name": spec.name,
            "version": path.name,
            "model": spec.model,
            "dims": spec.dims,
            "normalized": spec.normalized,
            "similarity": "cosine" if spec.normalized else "dot",
            "lexical": asdict(spec.lexical),
            "vectors": asdict(spec.vectors),
            "recipe": spec.recipe.to_dict() if spec.recipe else None,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "committed": None,
        }
        source = base / current if current is not None else None
        if vectors_only and source is not None and _shareable(source, meta):
            meta["vectors_only"] = True  # first: an interrupted link is known as a refresh
            write_atomic(path / "meta.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
            # The documents and their BM25 index do not change with the model: share them.
            _link_tree(source / "docs.sqlite", path / "docs.sqlite")
            _link_tree(source / "lucene", path / "lucene")
            return VectorsOnlyWriter(self, spec, path, lock=lock)
        store = VersionStore(path, spec.dims, writable=True)
        store.write_meta(meta)
        store.close()
        return EmbeddedWriter(self, spec, path, resumed=False, lock=lock)

    def make_current(self, name: str, version: str) -> None:
        """Point ``name`` at ``version`` atomically, then delete older versions."""
        base = self.index_dir(name)
        write_atomic(base / CURRENT, version + "\n")
        with self._lock:
            # Not closed: a search in another thread may still hold it. Its files stay
            # readable after deletion (open descriptors and maps) until it is collected.
            self._open.pop(name, None)
        stale = [v for v in self.versions(name) if v != version]

        def delete() -> None:
            for old in stale:
                shutil.rmtree(base / old, ignore_errors=True)

        if stale:  # a first version retires nothing: no reason to keep the writer waiting
            self.retirement.retire(delete)

    def set_query_model(self, name: str, recipe: VectorRecipe) -> None:
        """Record ``recipe`` (the current vectors, a new query model) for the current version."""
        current = self.current(name)
        if current is None:
            raise IndexNotFoundError(f"index '{name}' not found in {self.root}")
        path = self.index_dir(name) / current
        meta = _read_meta(path)
        check_same_vectors(name, VectorRecipe.from_dict(meta.get("recipe")), recipe)
        meta["recipe"] = recipe.to_dict()
        write_atomic(path / "meta.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
        with self._lock:
            for opened in self._open.values():
                if opened.path == path:
                    opened.meta = meta

    def version_recipe(self, physical: str) -> dict[str, Any] | None:
        """The recipe a version records now, read afresh (a query model may have been applied)."""
        parts = split_version(physical)
        if parts is None:
            raise IndexNotFoundError(f"'{physical}' is not a version name")
        path = self.index_dir(parts[0]) / physical
        meta = _read_meta(path)
        with self._lock:  # what this process has open of the version sees it too
            for opened in self._open.values():
                if opened.path == path:
                    opened.meta = meta
        recipe = meta.get("recipe")
        return dict(recipe) if isinstance(recipe, dict) else None

    # -- reading ------------------------------------------------------------
    def info(self, name: str) -> IndexInfo:
        opened = self._version(name)
        meta = opened.meta
        return IndexInfo(
            name=name,
            backend=self.kind,
            count=opened.store.count(),
            dims=int(meta["dims"]),
            model=str(meta["model"]),
            version=str(meta["version"]),
            similarity=str(meta["similarity"]),
            extra={
                "path": str(opened.path),
                "lexical": meta["lexical"],
                "vectors": meta["vectors"],
                "created": meta["created"],
                "committed": meta["committed"],
            },
            recipe=meta.get("recipe"),
        )

    def count(self, name: str) -> int:
        return self._version(name).store.count()

    def _opened(self, name: str, part: Callable[[_OpenVersion], T]) -> tuple[_OpenVersion, T]:
        """The current version and one of its parts, which open on first use: a writer that
        swapped versions just now may have deleted this version's files before that, and
        then the version it swapped to answers."""
        opened = self._version(name)
        try:
            return opened, part(opened)
        except BackendError:
            if self.current(name) in (None, opened.path.name):
                raise
            opened = self._version(name)
            return opened, part(opened)

    def bm25(self, name: str, queries: Sequence[str], k: int, *, texts: bool = True) -> list[list[Hit]]:
        opened, lucene = self._opened(name, lambda v: v.lucene)
        ranked = lucene.search(list(queries), k)
        if not texts:  # a hybrid search's side: many hits, built as cheaply as they come
            return [[Hit(doc_id, score) for doc_id, score in hits] for hits in ranked]
        docs = opened.store.get(sorted({d for hits in ranked for d, _ in hits}))
        return [[_hit(doc_id, score, docs) for doc_id, score in hits] for hits in ranked]

    def knn(
        self, name: str, vectors: np.ndarray, k: int, num_candidates: int | None = None, *, texts: bool = True
    ) -> list[list[Hit]]:
        opened, faiss = self._opened(name, lambda v: v.faiss)
        dims = int(opened.meta["dims"])
        if vectors.ndim != 2 or vectors.shape[1] != dims:
            raise DimensionMismatchError(
                f"query vectors have shape {vectors.shape} but index '{name}' holds {dims}-d "
                f"vectors from {opened.meta['model']}; search with that model"
            )
        scores, rows = faiss.search(vectors, k, num_candidates)
        row_ids = opened.store.ids_for_rows(sorted({int(r) for r in rows.ravel() if r >= 0}))
        if not texts:  # as in bm25: many hits, built as cheaply as they come
            return [
                [Hit(row_ids[r], s) for s, r in zip(qs.tolist(), qr.tolist(), strict=True) if r >= 0]
                for qs, qr in zip(scores, rows, strict=True)
            ]
        docs = opened.store.get(list(row_ids.values()))
        return [
            [_hit(row_ids[int(r)], float(s), docs) for s, r in zip(qs, qr, strict=True) if r >= 0]
            for qs, qr in zip(scores, rows, strict=True)
        ]

    def bm25_and_knn(
        self, name: str, queries: Sequence[str], vectors: np.ndarray, k: int, num_candidates: int | None = None
    ) -> tuple[list[list[Hit]], list[list[Hit]]]:
        return self.bm25(name, queries, k, texts=False), self.knn(name, vectors, k, num_candidates, texts=False)

    def score(self, name: str, vectors: np.ndarray, ids: Sequence[Sequence[str]]) -> list[dict[str, float]]:
        opened = self._version(name)
        matrix = opened.store.vectors()
        rows = opened.store.rows_for_ids(sorted({d for group in ids for d in group}))
        out: list[dict[str, float]] = []
        for vector, group in zip(vectors, ids, strict=True):
            present = [d for d in group if d in rows]
            sims = matrix[[rows[d] for d in present]] @ vector if present else np.empty(0)
            out.append({d: float(s) for d, s in zip(present, sims, strict=True)})
        return out

    def get(self, name: str, ids: Sequence[str]) -> dict[str, Document]:
        return self._version(name).store.get(ids)

    def iter_documents(self, name: str, batch: int = 1000) -> Iterator[list[Document]]:
        """Every document of the current version, in batches."""
        yield from self._version(name).store.iter_docs(batch)

    def drop(self, name: str) -> None:
        with self._lock:
            opened = self._open.pop(name, None)
            if opened is not None:
                opened.close()
        shutil.rmtree(self.index_dir(name), ignore_errors=True)

    def close(self) -> None:
        self.retirement.wait()
        with self._lock:
            for opened in self._open.values():
                opened.close()
            self._open.clear()


class EmbeddedWriter:
    """Appends to one version directory; ``commit`` builds Lucene (and HNSW) then swaps."""

    def __init__(
        self,
        backend: EmbeddedBackend,
        spec: IndexSpec,
        path: Path,
        resumed: bool,
        lock: FileLock | None = None,
        store: VersionStore | None = None,
    ) -> None:
        self.backend = backend
        self.spec = spec
        self.path = path
        self.version = path.name
        self.resumed = resumed
        self.lock = lock
        self.store = store or VersionStore(path, spec.dims, writable=True)
        self.on_build: Callable[[int], None] | None = None

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        return self.store.existing_ids(ids)

    def write(self, docs: Sequence[Document], vectors: np.ndarray) -> int:
        check_vectors(self.spec, docs, vectors)
        return self.store.append(docs, vectors)

    def count(self) -> int:
        return self.store.count()

    def commit(self, expected: int | None = None) -> int:
        count = self.store.count()
        if expected is not None and count != expected:
            raise CountMismatchError(
                f"{self.path} holds {count} documents but {expected} were expected; the index was "
                "not switched. Re-run the same command to resume"
            )
        meta = self.store.read_meta()
        if meta.get("committed") and meta.get("count") == count and (self.path / "lucene").is_dir():
            self.backend.make_current(self.spec.name, self.version)  # nothing new: no rebuild
            return count
        lexical = LexicalSettings(**meta["lexical"])
        built = build_lucene(
            self.path / "lucene", self.store.iter_docs(), lexical, self.backend.java_home, self.on_build
        )
        if built != count:
            raise CountMismatchError(f"Lucene indexed {built} of {count} documents in {self.path}")
        self.store.db.execute("PRAGMA journal_mode=DELETE")  # read-only openers need no WAL files
        _seal(self.backend, self.store, self.spec.name, meta, count)
        return count

    def close(self) -> None:
        self.store.close()
        if self.lock is not None:
            self.lock.release()


class VectorsOnlyWriter(EmbeddedWriter):
    """A refresh: the new version shares the current one's documents and Lucene index (hard
    links; neither changes with the model) and only its vectors are written, in row order.

    Rows are checked against the shared documents on every batch, so vectors can never be
    written against the wrong document.
    """

    def __init__(self, backend: EmbeddedBackend, spec: IndexSpec, path: Path, lock: FileLock | None = None) -> None:
        shared = VersionStore(path, spec.dims)  # the shared documents, read-only
        super().__init__(backend, spec, path, resumed=False, lock=lock, store=shared)
        self.rows = 0
        self._vectors = self.store.vectors_path.open("wb")

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        return {d for d, row in self.store.rows_for_ids(ids).items() if row < self.rows}

    def write(self, docs: Sequence[Document], vectors: np.ndarray) -> int:
        check_vectors(self.spec, docs, vectors)
        rows = self.store.rows_for_ids([d.id for d in docs])
        if [rows.get(d.id) for d in docs] != list(range(self.rows, self.rows + len(docs))):
            raise BackendError(
                f"a vectors-only write into {self.path} takes the current version's documents in their "
                f"order; expected rows from {self.rows}, nothing was written"
            )
        self._vectors.write(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
        self.rows += len(docs)
        return len(docs)

    def count(self) -> int:
        return self.rows

    def commit(self, expected: int | None = None) -> int:
        total = self.store.count()
        if self.rows != total or (expected is not None and expected != self.rows):
            raise CountMismatchError(
                f"{self.path} holds vectors for {self.rows} of its {total} documents; the index was not "
                "switched. Re-run the refresh"
            )
        self._vectors.flush()
        os.fsync(self._vectors.fileno())
        _seal(self.backend, self.store, self.spec.name, self.store.read_meta(), total)
        return total

    def close(self) -> None:
        self._vectors.close()
        super().close()


def _committed(path: Path) -> bool:
    meta_file = path / "meta.json"
    try:
        return bool(json.loads(meta_file.read_text()).get("committed")) and (path / "lucene").is_dir()
    except (OSError, ValueError):
        return False


def _shareable(source: Path, meta: dict[str, Any]) -> bool:
    """Whether a new version may share ``source``'s documents and Lucene index: the same
    BM25 settings, and ``source`` exactly as committed (an interrupted append since leaves
    rows in SQLite that its Lucene index lacks; then the refresh rewrites everything)."""
    try:
        old = _read_meta(source)
        if not old.get("committed") or old["lexical"] != json.loads(json.dumps(meta["lexical"])):
            return False
        wal = source / "docs.sqlite-wal"
        if wal.is_file() and wal.stat().st_size > 0:
            return False
        store = VersionStore(source, int(old["dims"]))
        try:
            return store.count() == old.get("count") and (source / "lucene").is_dir()
        finally:
            store.close()
    except (BackendError, OSError, KeyError, ValueError, sqlite3.Error):
        return False


def _seal(backend: EmbeddedBackend, store: VersionStore, name: str, meta: dict[str, Any], count: int) -> None:
    """Finish a written version: its HNSW graph when asked for, the commit record, the swap."""
    settings = VectorSettings(**meta["vectors"])
    if settings.embedded_type == "hnsw":
        build_hnsw(store.vectors(), settings, store.path / HNSW_FILE)
    meta.update(committed=datetime.now(UTC).isoformat(timespec="seconds"), count=count)
    store.write_meta(meta)
    backend.make_current(name, store.path.name)


def _link_tree(source: Path, target: Path) -> None:
    """Hard-link a file or a directory's files (copy where the file system cannot link)."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    if source.is_dir():
        shutil.copytree(source, target, copy_function=link)
    else:
        link(str(source), str(target))


def _read_meta(path: Path) -> dict[str, Any]:
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise BackendError(f"{path} has no meta.json; the index is damaged, rebuild it with --recreate")
    data: dict[str, Any] = json.loads(meta_path.read_text())
    return data


def _hit(doc_id: str, score: float, docs: dict[str, Document]) -> Hit:
    doc = docs.get(doc_id)
    return Hit(id=doc_id, score=score, title=doc.title if doc else None, text=doc.text if doc else None)
