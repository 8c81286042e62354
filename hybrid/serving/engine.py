"""The serving engine: one index, its current version pinned with the model that made it,
and concurrent requests micro-batched into backend calls.

A *generation* is a physical index version together with the query encoder of the model
that embedded it (:mod:`hybrid.manifest`). Every request is answered by exactly one
generation: its queries are encoded by that generation's model and searched in that
generation's version by its physical name, so a swap of the alias (a refresh or rebuild)
can never pair one model's query vectors with another model's passage vectors.

A watcher thread polls the index; when the alias moves, the new version's model is loaded
(reused when the weights hash is the same) and the version opened and warmed *before* the
engine switches to it, so requests keep being answered by the old generation until the
new one is complete. The old generation is released after ``grace_s``; a request whose
version was deleted under it (a writer with no grace) is retried once on the current
generation if its model is loaded, else refused at once (:class:`SwitchingError`): a batch
thread never loads a model, which would hold every queued request for the load.

Requests are queued; worker threads take what has queued up (at most ``max_batch``
queries, waiting at most ``max_wait_ms`` for more after the first when the last batch held
several requests) and run each group of equal search options as one batched encoder and
backend call.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

from hybrid.backends.base import Backend
from hybrid.errors import BackendError, HybridError, IndexNotFoundError
from hybrid.manifest import VectorRecipe
from hybrid.query_encoder import QueryEncoder, open_query_encoder
from hybrid.search import SearchConfig, Searcher
from hybrid.types import Hit

log = logging.getLogger(__name__)

EncoderFactory = Callable[[VectorRecipe | None, str], QueryEncoder]


@dataclass(frozen=True)
class EngineConfig:
    """How the engine batches and watches."""

    max_batch: int = 32  # queries per backend call
    # How long the first queued request waits for company: not at all by default. With two
    # batch threads a batch takes what queued while the other ran; waiting only idled cores.
    max_wait_ms: float = 0.0
    # Threads running batches: with two, one batch's encoding overlaps another's search
    # (the JVM's BM25, FAISS, Elasticsearch) and its answers, on cores one thread leaves idle.
    workers: int = 2
    poll_s: float = 1.0  # how often the alias is checked for a swap
    grace_s: float = 30.0  # how long a swapped-out version stays open for requests in flight


@dataclass(frozen=True)
class Generation:
    """An index version and the model that embedded it."""

    version: str
    model: str
    model_hash: str | None
    dims: int
    searcher: Searcher = field(repr=False)
    key: str = ""  # the encoder cache key: weights hash and query-side settings
    query_hash: str | None = None  # the query model's (the passage model's unless a query version names one)


@dataclass
class Answer:
    """One request's hits and the generation that produced them."""

    hits: list[list[Hit]]
    generation: Generation
    batch_size: int


@dataclass
class _Job:
    queries: list[str]
    config: SearchConfig
    future: Future[Answer]
    enqueued: float = field(default_factory=time.perf_counter)


class Engine:
    """Search one index of ``backend`` for many concurrent callers."""

    def __init__(
        self,
        backend: Backend,
        index: str,
        config: EngineConfig | None = None,
        *,
        encoder_factory: EncoderFactory | None = None,
        on_batch: Callable[[int], None] | None = None,
        owns_backend: bool = False,
    ) -> None:
        self.backend = backend
        self.index = index
        self.config = config or EngineConfig()
        self._factory = encoder_factory or server_encoder
        self._on_batch = on_batch
        self._owns_backend = owns_backend  # close() closes the backend too
        self._generation: Generation | None = None
        self._encoders: dict[str | None, QueryEncoder] = {}
        self._retired: list[tuple[float, str]] = []
        self._switch_lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._together = False  # the last batch took more than one request
        self.last_error: str | None = None

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> Engine:
        """Load the current generation (raises if the index or model is unusable), start threads."""
        self.refresh()
        for n in range(self.config.workers):
            self._spawn(self._work, f"hybrid-batch-{n}")
        self._spawn(self._watch, "hybrid-watch")
        return self

    def close(self) -> None:
        self._stop.set()
        for _ in range(self.config.workers):
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()
        for _, version in self._retired:
            self.backend.release(version)
        self._retired.clear()
        if self._owns_backend:
            self.backend.close()

    @property
    def healthy(self) -> bool:
        """Every batch thread is alive (a started engine)."""
        workers = [t for t in self._threads if t.name.startswith("hybrid-batch-")]
        return bool(workers) and all(t.is_alive() for t in workers)

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    @property
    def generation(self) -> Generation | None:
        return self._generation

    def set_on_batch(self, callback: Callable[[int], None] | None) -> None:
        """Call ``callback`` with the query count of every batch run from now on, in place of
        the one given before (the HTTP API's metrics take it when the app is made)."""
        self._on_batch = callback

    # -- generations ----------------------------------------------------------
    def refresh(self, *, load: bool = True) -> Generation:
        """Switch to the index's current version if it moved; returns the generation in use.

        With ``load`` False (a batch thread) it neither loads a model nor waits for a switch in
        progress: every request queued behind that thread would wait with it. It raises
        :class:`SwitchingError` instead (the HTTP API answers 503 with Retry-After)."""
        if not self._switch_lock.acquire(blocking=load):
            raise SwitchingError(f"'{self.index}' is switching to a new version; retry shortly")
        try:
            current = self._generation
            physical = self.backend.current(self.index)
            if physical is None:
                raise IndexNotFoundError(f"index '{self.index}' not found")
            # Read afresh: a query version changes the recipe of the same physical version.
            fresh = VectorRecipe.from_dict(self.backend.version_recipe(physical))
            query_hash = fresh.query_hash if fresh is not None else None
            if current is not None and current.version == physical and current.query_hash == query_hash:
                self._release_retired()
                return current
            generation = self._load(physical, load)
            self._generation = generation
            if current is not None and current.version != physical:  # a new query model keeps the version
                self._retired.append((time.monotonic(), current.version))
                log.info("switched %s from %s to %s", self.index, current.version, generation.version)
            self._release_retired()
            return generation
        finally:
            self._switch_lock.release()

    def _load(self, physical: str, load: bool = True) -> Generation:
        info = self.backend.info(physical)
        recipe = VectorRecipe.from_dict(info.recipe)
        # the weights and every query-side setting: the same weights with another pooling,
        # normalisation, prefix or length make other query vectors
        key = f"{recipe.query_hash}|{recipe.settings()}" if recipe is not None else f"name:{info.model}"
        encoder = self._encoders.get(key)
        if encoder is None:
            if not load:
                raise SwitchingError(f"'{self.index}' moved to {physical}, whose model is loading; retry shortly")
            encoder = self._factory(recipe, info.model)
            self._encoders = {k: v for k, v in self._encoders.items() if self._in_use(k)}
            self._encoders[key] = encoder
        searcher = Searcher(self.backend, physical, encoder)
        searcher.search(["warm up"], SearchConfig(mode="hybrid", k=1))  # opens and checks the version
        return Generation(
            version=physical,
            model=info.model,
            model_hash=recipe.model_hash if recipe is not None else encoder.model_hash,
            dims=info.dims,
            searcher=searcher,
            key=key,
            query_hash=recipe.query_hash if recipe is not None else encoder.model_hash,
        )

    def _in_use(self, key: str | None) -> bool:
        generation = self._generation
        return generation is not None and key == generation.key

    def _release_retired(self) -> None:
        """Close swapped-out versions whose grace period is over (never the one in use)."""
        now = time.monotonic()
        current = self._generation.version if self._generation is not None else None
        keep = []
        for retired_at, version in self._retired:
            if version == current:
                continue  # the alias went back to it: in use again
            if now - retired_at >= self.config.grace_s:
                self.backend.release(version)
            else:
                keep.append((retired_at, version))
        self._retired = keep

    def _watch(self) -> None:
        while not self._stop.wait(self.config.poll_s):
            try:
                self.refresh()
            except HybridError as exc:  # keep serving the generation we have
                self._watch_failed(str(exc), f"could not switch to the new version of {self.index}: {exc}")
            except Exception as exc:  # a connection error: report through /readyz, keep going
                # /readyz shows this to clients: the exception's own text stays in the log
                self._watch_failed(
                    f"could not check '{self.index}' for a new version ({type(exc).__name__})",
                    f"watching {self.index} failed: {type(exc).__name__}: {exc}",
                )
            else:
                if self.last_error is not None:
                    log.warning("watching %s works again", self.index)
                self.last_error = None

    def _watch_failed(self, public: str, detail: str) -> None:
        """Record a failed check for /readyz; log it when it is news, not at every poll of
        an outage (a backend down for an hour would otherwise fill the log)."""
        if public != self.last_error:
            log.warning("%s (logged again only if it changes)", detail)
        self.last_error = public

    # -- requests -------------------------------------------------------------
    def submit(self, queries: Sequence[str], config: SearchConfig) -> Future[Answer]:
        """Queue ``queries``; the future resolves to their hits and generation."""
        future: Future[Answer] = Future()
        self._queue.put(_Job(list(queries), config, future))
        return future

    def search(self, queries: Sequence[str], config: SearchConfig, timeout: float | None = None) -> Answer:
        return self.submit(queries, config).result(timeout)

    def _work(self) -> None:
        while not self._stop.is_set():
            first = self._queue.get()
            if first is None:
                return
            jobs = [first]
            size = len(first.queries)
            # Wait for company only while queries come together: a lone client's query then
            # runs at once, and under load the queue fills while a batch runs anyway.
            wait = self.config.max_wait_ms / 1000 if self._together else 0.0
            deadline = time.perf_counter() + wait
            while size < self.config.max_batch:
                remaining = deadline - time.perf_counter()
                try:
                    job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._queue.put(None)  # leave the stop signal for this thread's next loop
                    break
                jobs.append(job)
                size += len(job.queries)
            self._together = len(jobs) > 1
            groups: dict[SearchConfig, list[_Job]] = {}
            for job in jobs:
                if job.future.set_running_or_notify_cancel():  # a request given up on is not run
                    groups.setdefault(job.config, []).append(job)
            for config, group in groups.items():
                try:
                    self._run(config, group)
                except Exception:  # never let one batch take the thread down
                    log.exception("a search batch failed")

    def _run(self, config: SearchConfig, jobs: list[_Job]) -> None:
        queries = [q for job in jobs for q in job.queries]
        if self._on_batch is not None:
            self._on_batch(len(queries))
        try:
            generation, hits = self._search(queries, config)
        except Exception as exc:
            if len(jobs) > 1 and not isinstance(exc, HybridError):
                for job in jobs:  # one bad request must not fail the others batched with it
                    self._run(config, [job])
                return
            for job in jobs:
                _settle(job.future, exception=exc)
            return
        start = 0
        for job in jobs:
            part = hits[start : start + len(job.queries)]
            start += len(job.queries)
            _settle(job.future, Answer(part, generation, len(queries)))

    def _search(self, queries: list[str], config: SearchConfig) -> tuple[Generation, list[list[Hit]]]:
        generation = self._generation
        assert generation is not None, "Engine.start() was not called"
        try:
            return generation, generation.searcher.search(queries, config)
        except (IndexNotFoundError, BackendError):
            # The version may have been deleted by the process that swapped the alias; switch
            # only if the new version's model is loaded (the watcher loads it off this path).
            # If the engine moved on since this batch began (the watcher, or the other batch
            # thread's retry), that generation serves it without waiting on the switch lock.
            current = self._generation
            fresh = current if current is not None and current is not generation else self.refresh(load=False)
            if fresh.version == generation.version:
                raise
            return fresh, fresh.searcher.search(queries, config)

    def get(self, ids: Sequence[str]) -> tuple[Generation, dict[str, Any]]:
        """Documents by id from the generation in use."""
        generation = self._generation
        assert generation is not None, "Engine.start() was not called"
        return generation, self.backend.get(generation.version, list(ids))


class SwitchingError(HybridError):
    """The index moved to a version this server cannot answer from yet (its model is loading)."""


def _settle(future: Future[Answer], result: Answer | None = None, exception: BaseException | None = None) -> None:
    """Resolve ``future`` unless it already was (cancelled meanwhile: its caller has gone)."""
    if future.done():
        return
    with contextlib.suppress(InvalidStateError):
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)  # type: ignore[arg-type]


def server_encoder(recipe: VectorRecipe | None, model: str) -> QueryEncoder:
    """The engine's encoder: the recipe's model (``model`` names it for an index made
    before recipes), checked against its hash, for batches. Its threads do not busy-wait
    between batches: that would take the cores from the event loop, which parses and
    answers the requests meanwhile, and from a backend on the same machine."""
    return open_query_encoder(None if recipe is not None else model, recipe=recipe, batch=True, spin=False)
