"""On-disk layout of one embedded index version: documents (SQLite) and raw vectors.

    <store>/<name>/CURRENT          the current version's directory name (atomic replace)
    <store>/<name>/v000001/
        meta.json                   spec, model, counts
        docs.sqlite                 row -> id, title, text
        vectors.f32                 float32 rows, row-major, row i = docs.row i
        lucene/                     Anserini BM25 index (built on commit)
        faiss.hnsw                  optional FAISS HNSW graph (built on commit)

Vectors are appended before their documents are committed to SQLite, so after a crash the
vector file is truncated back to the SQLite row count and writing resumes from there.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hybrid.errors import BackendError
from hybrid.types import Document

SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    row INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    text TEXT NOT NULL
)
"""
SQL_CHUNK = 500  # SQLite caps host parameters per statement


class VersionStore:
    """Documents and vectors of one version directory."""

    def __init__(self, path: Path, dims: int, *, writable: bool = False) -> None:
        self.path = path
        self.dims = dims
        self.meta_path = path / "meta.json"
        self.vectors_path = path / "vectors.f32"
        db_path = path / "docs.sqlite"
        if writable and db_path.is_file() and db_path.stat().st_nlink > 1:
            _unshare(db_path)  # a refreshed version shares its documents with the one before it
        uri = f"file:{db_path}" + ("" if writable else "?mode=ro")
        self._lock = threading.Lock()
        try:
            self.db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        except sqlite3.Error as exc:
            raise BackendError(f"cannot open {path / 'docs.sqlite'}: {exc}") from exc
        if writable:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute(SCHEMA)
            self.db.commit()
            self._repair_vectors()

    # -- metadata -------------------------------------------------------------
    def read_meta(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.meta_path.read_text())
        return data

    def write_meta(self, meta: dict[str, Any]) -> None:
        write_atomic(self.meta_path, json.dumps(meta, indent=2, sort_keys=True) + "\n")

    # -- writing ----------------------------------------------------------------
    def count(self) -> int:
        with self._lock:
            return int(self.db.execute("SELECT COUNT(*) FROM docs").fetchone()[0])

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        with self._lock:
            for chunk in _chunks(list(ids)):
                marks = ",".join("?" * len(chunk))
                found.update(r[0] for r in self.db.execute(f"SELECT id FROM docs WHERE id IN ({marks})", chunk))
        return found

    def append(self, docs: Sequence[Document], vectors: np.ndarray) -> int:
        """Append a batch: vectors first (flushed), then the documents in one transaction."""
        with self._lock:
            start = int(self.db.execute("SELECT COALESCE(MAX(row), 0) FROM docs").fetchone()[0])
            with self.vectors_path.open("ab") as fh:
                fh.write(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
                fh.flush()
                os.fsync(fh.fileno())
            rows = [(start + i + 1, d.id, d.title, d.text) for i, d in enumerate(docs)]
            try:
                with self.db:
                    self.db.executemany("INSERT INTO docs(row, id, title, text) VALUES (?, ?, ?, ?)", rows)
            except sqlite3.IntegrityError as exc:
                self._truncate_vectors(start)
                raise BackendError(f"duplicate document id in batch: {exc}") from exc
        return len(rows)

    def _repair_vectors(self) -> None:
        self._truncate_vectors(self.count())

    def _truncate_vectors(self, rows: int) -> None:
        want = rows * self.dims * 4
        have = self.vectors_path.stat().st_size if self.vectors_path.exists() else 0
        if have > want:
            with self.vectors_path.open("r+b") as fh:
                fh.truncate(want)
        elif have < want:
            raise BackendError(
                f"{self.vectors_path} has fewer vectors than documents; the version is damaged, "
                "rebuild it with --recreate"
            )

    # -- reading ----------------------------------------------------------------
    def vectors(self) -> np.ndarray:
        """All vectors as a read-only memory map ``(count, dims)``."""
        n = self.count()
        if n == 0:
            return np.zeros((0, self.dims), dtype=np.float32)
        return np.memmap(self.vectors_path, dtype=np.float32, mode="r", shape=(n, self.dims))

    def ids_for_rows(self, rows: Sequence[int]) -> dict[int, str]:
        out: dict[int, str] = {}
        with self._lock:
            for chunk in _chunks([int(r) + 1 for r in rows]):
                marks = ",".join("?" * len(chunk))
                for row, doc_id in self.db.execute(f"SELECT row, id FROM docs WHERE row IN ({marks})", chunk):
                    out[row - 1] = doc_id
        return out

    def rows_for_ids(self, ids: Sequence[str]) -> dict[str, int]:
        """0-based vector rows of the given ids (absent ids are left out)."""
        out: dict[str, int] = {}
        with self._lock:
            for chunk in _chunks(list(ids)):
                marks = ",".join("?" * len(chunk))
                for doc_id, row in self.db.execute(f"SELECT id, row FROM docs WHERE id IN ({marks})", chunk):
                    out[doc_id] = row - 1
        return out

    def get(self, ids: Sequence[str]) -> dict[str, Document]:
        out: dict[str, Document] = {}
        with self._lock:
            for chunk in _chunks(list(ids)):
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT id, title, text FROM docs WHERE id IN ({marks})"
                for doc_id, title, text in self.db.execute(sql, chunk):
                    out[doc_id] = Document(id=doc_id, title=title, text=text)
        return out

    def iter_docs(self, batch: int = 2000) -> Iterator[list[Document]]:
        """All documents in row order, in batches (a separate cursor; safe while reading)."""
        last = 0
        while True:
            with self._lock:
                rows = self.db.execute(
                    "SELECT row, id, title, text FROM docs WHERE row > ? ORDER BY row LIMIT ?", (last, batch)
                ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield [Document(id=r[1], title=r[2], text=r[3]) for r in rows]

    def close(self) -> None:
        with self._lock:
            self.db.close()


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (write a sibling, fsync, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _unshare(path: Path) -> None:
    """Give ``path`` its own copy of a hard-linked file before it is written to."""
    tmp = path.with_name(path.name + ".unshare")
    shutil.copy2(path, tmp)
    with tmp.open("rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _chunks(items: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(items), SQL_CHUNK):
        yield items[start : start + SQL_CHUNK]
