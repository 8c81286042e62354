"""Stream a corpus into a backend: read, skip what is there, encode, write, commit.

Memory is bounded by one batch (plus the one being written in the background). Re-running
the same job resumes: documents already in the version being built are skipped before
they are encoded, which is where the time goes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from hybrid.backends.base import Backend, IndexWriter
from hybrid.config import IndexSpec, LexicalSettings, VectorSettings
from hybrid.corpus import CorpusReader, JsonlFields, open_corpus
from hybrid.encoder import Encoder
from hybrid.errors import ConfigError
from hybrid.types import Document

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexJob:
    """What to index and where."""

    corpus: Path | None
    index: str
    format: str | None = None
    recreate: bool = False
    batch_size: int = 256
    skip_malformed: bool = False
    fields: JsonlFields | None = None
    lexical: LexicalSettings = field(default_factory=LexicalSettings)
    vectors: VectorSettings = field(default_factory=VectorSettings)
    limit: int | None = None
    vectors_only: bool = False  # a refresh: the documents are the current version's, in its order

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("--batch-size must be at least 1")


@dataclass
class IndexStats:
    """Counts and timings of one indexing run; ``count`` is verified against the backend."""

    version: str = ""
    resumed: bool = False
    read: int = 0
    written: int = 0
    already_indexed: int = 0
    duplicates: int = 0
    malformed: int = 0
    count: int = 0
    encode_seconds: float = 0.0
    write_seconds: float = 0.0
    commit_seconds: float = 0.0
    total_seconds: float = 0.0
    bytes_read: int = 0
    total_bytes: int = 0
    phase: str = "indexing"


Progress = Callable[[IndexStats], None]


def run_index(
    job: IndexJob,
    backend: Backend,
    encoder: Encoder,
    progress: Progress | None = None,
    documents: Iterable[Document] | None = None,
) -> IndexStats:
    """Index ``job.corpus`` (or ``documents``) into ``job.index``; returns verified stats.

    Raises:
        CorpusError: a malformed line (unless ``skip_malformed``); what was written stays.
        DimensionMismatchError: the index holds vectors of another dimension.
        CountMismatchError: the backend's count differs from what was written.
    """
    started = time.perf_counter()
    reader = _reader(job, documents)
    spec = IndexSpec(
        name=job.index,
        dims=encoder.dims,
        model=encoder.name,
        normalized=encoder.settings.normalize,
        lexical=job.lexical,
        vectors=job.vectors,
        recipe=encoder.recipe(),
    )
    writer = backend.open_writer(spec, recreate=job.recreate, vectors_only=job.vectors_only)
    stats = IndexStats(version=writer.version, resumed=writer.resumed)
    before = writer.count() if writer.resumed else 0
    notify = progress or (lambda _s: None)
    try:
        _encode_and_write(job, reader, encoder, writer, stats, notify)
        stats.malformed = reader.skipped
        stats.phase = "committing"
        notify(stats)
        t0 = time.perf_counter()
        stats.count = writer.commit(expected=before + stats.written)
        stats.commit_seconds = time.perf_counter() - t0
    finally:
        writer.close()
    stats.total_seconds = time.perf_counter() - started
    stats.phase = "done"
    notify(stats)
    return stats


def _reader(job: IndexJob, documents: Iterable[Document] | None) -> CorpusReader | _Documents:
    """What ``run_index`` reads: ``documents`` when given, else the job's corpus file."""
    if documents is not None:  # a reader with counters (e.g. an ElasticSource) is used as it is
        return documents if hasattr(documents, "progress") else _Documents(documents)  # type: ignore[return-value]
    if job.corpus is not None:
        return open_corpus(job.corpus, job.format, fields=job.fields, skip_malformed=job.skip_malformed)
    raise ConfigError("nothing to index: give a corpus path or documents")


def _encode_and_write(
    job: IndexJob,
    reader: CorpusReader | _Documents,
    encoder: Encoder,
    writer: IndexWriter,
    stats: IndexStats,
    notify: Progress,
) -> None:
    """Encode the new documents of each batch while the batch before is written in the
    background; returns once every write is done."""
    pending: Future[float] | None = None
    in_flight: set[str] = set()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hybrid-write") as pool:
        for batch in batched(reader, job.batch_size, job.limit):
            stats.read += len(batch)
            fresh = _new_documents(batch, writer, in_flight, stats)
            stats.bytes_read, stats.total_bytes = reader.progress
            if fresh:
                t0 = time.perf_counter()
                vectors = encoder.encode_passages(fresh)
                stats.encode_seconds += time.perf_counter() - t0
                if pending is not None:
                    stats.write_seconds += pending.result()
                pending = pool.submit(_timed_write, writer, fresh, vectors)
                in_flight = {d.id for d in fresh}
                stats.written += len(fresh)
            notify(stats)
        if pending is not None:
            stats.write_seconds += pending.result()


class _Documents:
    """An in-process document stream with the reader interface (no byte progress)."""

    def __init__(self, documents: Iterable[Document]) -> None:
        self.documents = documents
        self.skipped = 0
        self.progress = (0, 0)

    def __iter__(self) -> Iterator[Document]:
        return iter(self.documents)


def batched(items: Iterable[T], size: int, limit: int | None = None) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last shorter), stopping after ``limit`` items."""
    batch: list[T] = []
    for n, item in enumerate(items, start=1):
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
        if limit is not None and n >= limit:
            break
    if batch:
        yield batch


def _new_documents(
    batch: list[Document], writer: IndexWriter, in_flight: set[str], stats: IndexStats
) -> list[Document]:
    """Drop repeats inside the batch, ids still being written, and ids already stored."""
    seen: dict[str, Document] = {}
    for doc in batch:
        if doc.id in seen or doc.id in in_flight:
            stats.duplicates += 1
        else:
            seen[doc.id] = doc
    stored = writer.existing_ids(list(seen))
    if stored:
        if writer.resumed:
            stats.already_indexed += len(stored)
        else:
            stats.duplicates += len(stored)  # a fresh version only holds this run's documents
    return [d for i, d in seen.items() if i not in stored]


def _timed_write(writer: IndexWriter, docs: list[Document], vectors: object) -> float:
    t0 = time.perf_counter()
    writer.write(docs, vectors)  # type: ignore[arg-type]
    return time.perf_counter() - t0
