"""Search one index with BM25, dense kNN or hybrid fusion, on any backend."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np

from hybrid.backends.base import Backend
from hybrid.errors import ConfigError
from hybrid.fusion import FusionConfig, fuse
from hybrid.query_encoder import QueryEncoder, check_encoder, encoder_for_index
from hybrid.types import SEARCH_MODES, Hit, SearchMode

# BM25 uses a query's first 1,000 words: Lucene refuses more than 1,024 clauses (ES scales
# its limit with the heap), and a longer "query" is a document, not a search. The dense side
# truncates by tokens (the model's query length).
MAX_BM25_TERMS = 1000


def clean_query(text: str) -> str:
    """Query text safe for every backend: undecodable bytes (lone surrogates from a
    non-UTF-8 command line) become U+FFFD and NUL characters are dropped."""
    if any("\ud800" <= ch <= "\udfff" for ch in text):
        try:  # bytes smuggled in by surrogateescape (U+DC80-DCFF): decode what they were
            text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        except UnicodeEncodeError:  # any other lone surrogate (e.g. a JSON "\ud800"): replaced
            text = text.encode("utf-8", "replace").decode("utf-8")
    return text.replace("\x00", " ")


def bm25_terms(queries: Sequence[str]) -> list[str]:
    """Each query cut to its first :data:`MAX_BM25_TERMS` words, for BM25."""
    return [" ".join(q.split()[:MAX_BM25_TERMS]) for q in queries]


@dataclass(frozen=True)
class SearchConfig:
    """One search request's options."""

    mode: SearchMode = "hybrid"
    k: int = 10
    fusion: FusionConfig = field(default_factory=FusionConfig)
    num_candidates: int | None = None
    texts: bool = True  # fill each hit's title and text (False: ids and scores only)

    def __post_init__(self) -> None:
        if self.mode not in SEARCH_MODES:
            raise ConfigError(f"unknown mode '{self.mode}'; choose one of {', '.join(SEARCH_MODES)}")
        if self.k < 1:
            raise ConfigError("k must be at least 1")


@dataclass
class SearchTimings:
    """Seconds spent per stage, summed over calls."""

    encode: float = 0.0
    bm25: float = 0.0
    knn: float = 0.0
    fuse: float = 0.0


class Searcher:
    """Runs searches against ``index`` on ``backend``; loads a query encoder only when needed.

    The encoder defaults to the model the index was built with, through the numpy fast
    path when the model allows it (see :mod:`hybrid.query_encoder`), or torch with
    ``batch`` (many queries per call, as in eval). A given encoder must be that same model.
    """

    def __init__(
        self,
        backend: Backend,
        index: str,
        encoder: QueryEncoder | Callable[[], QueryEncoder] | None = None,
        *,
        batch: bool = False,
    ) -> None:
        self.backend = backend
        self.index = index
        self._encoder = encoder
        self._checked = encoder is None
        self.batch = batch
        self.timings = SearchTimings()
        self._warm = False  # a hybrid search has run (the JVM and the model are loaded)

    @property
    def encoder(self) -> QueryEncoder:
        if self._encoder is None:
            self._encoder = encoder_for_index(self.backend, self.index, batch=self.batch)
        elif callable(self._encoder) and not hasattr(self._encoder, "encode_queries"):
            self._encoder = self._encoder()
        if not self._checked:
            check_encoder(self.backend, self.index, self._encoder)  # type: ignore[arg-type]
            self._checked = True
        return self._encoder  # type: ignore[return-value]

    def search(self, queries: Sequence[str], config: SearchConfig) -> list[list[Hit]]:
        """Top ``config.k`` hits for each query, in order (an empty query has none)."""
        queries = [clean_query(q) for q in queries]
        blank = [i for i, q in enumerate(queries) if not q.strip()]
        if blank:  # searched without them; their rows stay empty
            keep = [i for i, q in enumerate(queries) if q.strip()]
            found = self.search([queries[i] for i in keep], config) if keep else []
            rows: list[list[Hit]] = [[] for _ in queries]
            for i, hits in zip(keep, found, strict=True):
                rows[i] = hits
            return rows
        if config.mode == "bm25":
            return self._bm25(queries, config.k, config.texts)
        depth = config.k if config.mode == "dense" else max(config.k, config.fusion.depth)
        if config.mode == "dense":
            return self._knn(queries, depth, config.num_candidates, config.texts)
        # Each side returns ids and scores only; texts are fetched for the fused top k alone.
        # A server (Elasticsearch) gets both sides in one request once the queries are
        # embedded: it runs them in parallel, and one round trip with no second Python thread
        # measured faster than overlapping the BM25 request with encoding (figures in
        # docs/benchmarks.md, Serving). In this process, on a cold start the encoder and kNN run
        # in a thread while the JVM starts for BM25; warm, both sides are CPU work here and
        # run one after the other (at once they only contend).
        if not self.backend.in_process:
            vectors = self._embed(queries)
            start = time.perf_counter()
            terms = bm25_terms(queries)
            lexical, dense = self.backend.bm25_and_knn(self.index, terms, vectors, depth, config.num_candidates)
            self.timings.knn += time.perf_counter() - start  # both sides: one request
        elif self._warm:
            lexical = self._bm25(queries, depth, False)
            dense = self._knn(queries, depth, config.num_candidates, False)
        else:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hybrid-knn") as pool:
                pending = pool.submit(self._knn, queries, depth, config.num_candidates, False)
                lexical = self._bm25(queries, depth, False)
                dense = pending.result()
            self._warm = True
        start = time.perf_counter()
        fused = [fuse(b, d, config.fusion, config.k) for b, d in zip(lexical, dense, strict=True)]
        self.timings.fuse += time.perf_counter() - start
        return self._with_texts(fused) if config.texts else fused

    def _with_texts(self, rows: list[list[Hit]]) -> list[list[Hit]]:
        """``rows`` with each hit's title and text from the index (one lookup for all)."""
        docs = self.backend.get(self.index, sorted({h.id for row in rows for h in row}))
        return [
            [replace(h, title=docs[h.id].title, text=docs[h.id].text) if h.id in docs else h for h in row]
            for row in rows
        ]

    def _bm25(self, queries: Sequence[str], k: int, texts: bool = True) -> list[list[Hit]]:
        start = time.perf_counter()
        hits = self.backend.bm25(self.index, bm25_terms(queries), k, texts=texts)
        self.timings.bm25 += time.perf_counter() - start
        return hits

    def _knn(self, queries: Sequence[str], k: int, num_candidates: int | None, texts: bool = True) -> list[list[Hit]]:
        vectors = self._embed(queries)
        start = time.perf_counter()
        hits = self.backend.knn(self.index, vectors, k, num_candidates, texts=texts)
        self.timings.knn += time.perf_counter() - start
        return hits

    def _embed(self, queries: Sequence[str]) -> np.ndarray:
        encoder = self.encoder  # loaded (and checked) outside the timed part
        start = time.perf_counter()
        vectors = encoder.encode_queries(queries)
        self.timings.encode += time.perf_counter() - start
        return vectors
