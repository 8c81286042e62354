"""Keep an index complete while its application writes: indexing of what is missing.

After ``hybrid index --from-es SHOP --in-place`` the application keeps writing ``SHOP``; a
document it adds or rewrites whole has no vector, and one whose text it changes by a partial
update keeps a vector of its old text. :func:`sync` runs passes; each one

1. reads which vector field is active now (a refresh or model swap may have switched it)
   and the recipe that made it, and embeds with exactly that recipe;
2. counts the documents lacking that field and, where text hashes are recorded, the ones
   written since the last check (two count queries: a pass with nothing to do is cheap);
3. reads those over a point in time, embeds the missing ones and those whose text no longer
   matches its hash, and writes the vector and hash alone by conditional partial updates
   (see :mod:`hybrid.backends.es_sync`: a rewrite meanwhile is retried next pass, a delete
   is skipped).

Documents with no text are counted and skipped; they are not looked at again in the same
run unless the application rewrites them. A rerun after a crash simply finds what is still
missing. Hybrid's own indices (behind an alias) are synced the same way, for documents
other writers add to them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hybrid.backends import es_sync
from hybrid.errors import ConfigError, ModelError
from hybrid.manifest import VectorRecipe

if TYPE_CHECKING:
    from hybrid.backends.base import Backend
    from hybrid.encoder import Encoder

log = logging.getLogger(__name__)

CONFLICT_PASSES = 5  # a single run retries documents rewritten under it this many passes at most


@dataclass(frozen=True)
class SyncJob:
    """What to keep complete and how."""

    index: str
    follow: bool = False  # keep running passes until stopped
    interval: float = 30.0  # seconds between passes that found nothing to embed (--follow)
    batch_size: int = 256  # documents read, embedded and written at a time
    encode_batch: int = 32  # passages per forward pass
    device: str | None = None
    changed: bool = True  # also re-embed documents whose text no longer matches its hash

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.encode_batch < 1:
            raise ConfigError("--batch-size and --encode-batch must be at least 1")
        if self.interval < 0:
            raise ConfigError("--interval must be zero or more seconds")


@dataclass
class PassStats:
    """One pass: what it found and what became of it."""

    number: int
    version: str = ""  # the active version the pass embedded for
    found: int = 0  # documents lacking the vector (text-less ones already known excluded)
    checked: int = 0  # documents with a vector whose text was compared with its hash
    changed: int = 0  # ... and did not match it
    embedded: int = 0
    conflicts: int = 0  # rewritten by the application meanwhile: retried next pass
    deleted: int = 0  # deleted by the application meanwhile
    skipped: int = 0  # no text to embed
    total: int = 0  # documents this pass reads (found + to check), for progress
    done: int = 0
    seconds: float = 0.0
    model_seconds: float = 0.0  # of ``seconds``, loading the encoder (first use, or a model swap)
    interrupted: bool = False  # stopped after the batch in hand


Progress = Callable[[PassStats], None]


def sync(
    job: SyncJob, backend: Backend, progress: Progress | None = None, stop: threading.Event | None = None
) -> Iterator[PassStats]:
    """Run sync passes over ``job.index``, yielding each pass's stats when it ends.

    One pass (repeated for documents rewritten under it), or with ``job.follow`` passes
    every ``job.interval`` seconds until ``stop`` is set; a set ``stop`` ends the pass in
    hand after its current batch.

    Raises:
        ConfigError: the embedded store, or an index without hybrid vectors (adopt it first).
        ModelError: the model of the active version is gone or changed.
        BackendError: the cluster rejected a vector update (other than a conflict or delete).
    """
    es_sync.require_elastic(backend)
    run = _Run(job, backend, progress or (lambda _s: None), stop or threading.Event())
    number = 0
    while True:
        number += 1
        stats = run.one_pass(number)
        yield stats
        if run.stop.is_set():
            return
        if not job.follow:
            if stats.conflicts == 0 or number > CONFLICT_PASSES:
                return
            continue
        if stats.embedded == 0 and stats.conflicts == 0 and run.stop.wait(job.interval):
            return


def missing_count(backend: Backend, index: str) -> int:
    """How many documents of ``index`` lack its active vector (text-less ones included).

    One count query, for ``hybrid info`` and monitoring. Raises ConfigError for the embedded
    store and for an index without hybrid vectors, IndexNotFoundError when there is none.
    """
    target = es_sync.resolve(backend, index)
    return es_sync.count(backend.client, target.index, es_sync.missing_query(target))  # type: ignore[attr-defined]


def unchecked_count(backend: Backend, index: str) -> int | None:
    """Documents with a vector and a text hash written since sync last checked their texts:
    the ones whose vector may be stale (one count query). ``None`` until sync has checked
    this vector field once (every hashed document would count). Raises as :func:`missing_count`."""
    target = es_sync.resolve(backend, index)
    client = backend.client  # type: ignore[attr-defined]
    checked = es_sync.load_checked(client, target)
    if checked == es_sync.NOTHING_SEEN:
        return None
    return es_sync.count(client, target.index, es_sync.changed_query(target, checked))


class _Run:
    """State kept across the passes of one run."""

    def __init__(self, job: SyncJob, backend: Backend, progress: Progress, stop: threading.Event) -> None:
        self.job = job
        self.backend = backend
        self.client: Any = backend.client  # type: ignore[attr-defined]
        self.timeout = float(backend.config.request_timeout)  # type: ignore[attr-defined]
        self.progress = progress
        self.stop = stop
        self.skipped: dict[str, dict[str, tuple[int, int]]] = {}  # index -> text-less id -> (seq_no, term)
        self.checked: dict[tuple[str, str], int] = {}  # (index, field) -> texts checked up to this seq_no
        self.mapped: set[tuple[str, str]] = set()
        self._encoder: tuple[tuple[Any, ...], Encoder] | None = None

    def one_pass(self, number: int) -> PassStats:
        started = time.perf_counter()
        target = es_sync.resolve(self.backend, self.job.index)
        recipe = VectorRecipe.from_dict(target.recipe)
        if recipe is None:
            raise ModelError(
                f"'{target.version}' was embedded before hybrid recorded how (no recipe); sync cannot embed "
                f"like it: re-embed it with hybrid index ... --recreate -i {self.job.index}"
            )
        stats = PassStats(number=number, version=target.version)
        if (target.index, target.field) not in self.mapped:
            es_sync.ensure_hash_mapping(self.client, target)
            self.mapped.add((target.index, target.field))
        skipped = self.skipped.setdefault(target.index, {})
        if skipped:
            es_sync.recheck_skipped(self.client, target.index, skipped)
        after = self._checked_up_to(target) if self.job.changed else None
        top = es_sync.max_seq_no(self.client, target.index)  # before reading: bounds what this pass sees
        self.client.indices.refresh(index=target.index)  # so reads see every write up to ``top``
        stats.found = es_sync.count(self.client, target.index, es_sync.missing_query(target, list(skipped)))
        to_check = 0
        if after is not None:
            to_check = es_sync.count(self.client, target.index, es_sync.changed_query(target, after, list(skipped)))
        stats.total = stats.found + to_check
        self.progress(stats)
        if stats.total:
            query = es_sync.pass_query(target, after if to_check else None, list(skipped))
            self._work(target, recipe, query, stats)
        if after is not None and not stats.interrupted and top > after:
            self.checked[(target.index, target.field)] = top
            es_sync.store_checked(self.client, target, top)
        stats.seconds = time.perf_counter() - started
        log.info("sync pass %d of %s: %s", number, target.version, stats)
        return stats

    def _checked_up_to(self, target: es_sync.Target) -> int:
        key = (target.index, target.field)
        if key not in self.checked:
            self.checked[key] = es_sync.load_checked(self.client, target)
        return self.checked[key]

    def _work(self, target: es_sync.Target, recipe: VectorRecipe, query: dict[str, Any], stats: PassStats) -> None:
        """Read, embed and write in batches; the write of one batch overlaps the next's encoding."""
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hybrid-sync-write")
        pending: Future[es_sync.Written] | None = None
        try:
            for hits in es_sync.pages(self.client, target, query, self.job.batch_size):
                batch = self._select(target, hits, stats)
                if batch:
                    vectors = self._encoder_for(recipe, stats).encode_passages([p.doc for p in batch])
                    if pending is not None:
                        _add(stats, pending.result())
                    pending = pool.submit(es_sync.write, self.client, self.timeout, target, batch, vectors)
                stats.done += len(hits)
                self.progress(stats)
                if self.stop.is_set():
                    stats.interrupted = True
                    break
            if pending is not None:
                _add(stats, pending.result())
                pending = None
        finally:
            pool.shutdown(wait=True)
        self.progress(stats)

    def _select(self, target: es_sync.Target, hits: list[dict[str, Any]], stats: PassStats) -> list[es_sync.Pending]:
        """The hits to embed: missing ones with text, and checked ones whose text changed."""
        out = []
        skipped = self.skipped[target.index]
        for hit in hits:
            doc = es_sync.document(target, hit)
            if doc is None:
                skipped[hit["_id"]] = (int(hit["_seq_no"]), int(hit["_primary_term"]))
                stats.skipped += 1
                continue
            if es_sync.CHANGED in hit.get("matched_queries", ()):
                stats.checked += 1
                if not es_sync.stale(target, hit, doc):
                    continue
                stats.changed += 1
            out.append(es_sync.pending(hit, doc))
        return out

    def _encoder_for(self, recipe: VectorRecipe, stats: PassStats) -> Encoder:
        """The encoder of ``recipe``, loaded on first use and kept until the recipe changes."""
        key = recipe.vectors_key()
        if self._encoder is None or self._encoder[0] != key:
            from hybrid.encoder import Encoder, EncoderConfig

            started = time.perf_counter()

            self._encoder = None  # a model swap: free the old weights before loading the new
            config = EncoderConfig(
                model=str(recipe.model_dir()),
                settings=recipe.settings(),
                model_hash=recipe.model_hash,
                batch_size=self.job.encode_batch,
                device=self.job.device,
            )
            self._encoder = (key, Encoder(config))
            stats.model_seconds += time.perf_counter() - started
        return self._encoder[1]


def _add(stats: PassStats, written: es_sync.Written) -> None:
    stats.embedded += written.written
    stats.conflicts += written.conflicts
    stats.deleted += written.deleted


__all__ = ["PassStats", "SyncJob", "missing_count", "sync"]
