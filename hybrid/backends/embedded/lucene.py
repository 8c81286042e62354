"""BM25 through Anserini's Lucene classes (pyserini's engine), called via pyjnius.

Searching calls Lucene's ``IndexSearcher`` directly rather than Anserini's
``SimpleSearcher.search``, which builds a result object (and loads the stored document)
per hit, each wrapped by pyjnius on its way to Python: that per-hit crossing cost several
times the search itself. What makes the ranking Anserini's is kept: its analyzer, its
bag-of-words query generator, its sort (score, then external id) and its score rounding
(:func:`anserini_ties`). The loop over a batch of queries and their hits runs in the JVM
(:mod:`~hybrid.backends.embedded.method_handles`): one JNI call per batch, primitive
arrays back. Lucene doc ids become external ids through a cache kept per opened index,
filled from the stored ``id`` field for the documents that searches return.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from hybrid.backends.embedded.method_handles import Handles
from hybrid.config import LexicalSettings
from hybrid.java import start_jvm
from hybrid.types import Document

INDEX_THREADS = 2
CONTENTS = "contents"  # Anserini's analyzed field (IndexArgs.CONTENTS)
ID = "id"  # Anserini's stored and sorted id field (Constants.ID)
ANALYZER = "org.apache.lucene.analysis.Analyzer"
SORT = "org.apache.lucene.search.Sort"
# ScoreTiesAdjusterReranker's constants: a run of scores within TIE of each other is kept
# strictly ordered by lowering each by STEP per place in the run.
TIE = np.float32(1e-4)
STEP = np.float32(1e-6)


def build_lucene(
    target: Path,
    batches: Iterable[list[Document]],
    lexical: LexicalSettings,
    java_home: str | None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Build a fresh Lucene index at ``target`` from document batches; returns the count.

    Built beside the target and renamed into place, so a crash leaves the old index.
    """
    autoclass = start_jvm(java_home, builds_index=True)
    indexer_cls = autoclass("io.anserini.index.SimpleIndexer")
    tmp = target.with_name(target.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    args = [
        "-index",
        str(tmp),
        "-collection",
        "JsonCollection",
        "-input",
        "",
        "-threads",
        str(INDEX_THREADS),
        "-stemmer",
        lexical.stemmer,
    ]
    if lexical.keep_stopwords:
        args.append("-keepStopwords")
    indexer = indexer_cls(args)
    total = 0
    try:
        for batch in batches:
            raw = [json.dumps({"id": d.id, "contents": f"{d.title}\n{d.text}" if d.title else d.text}) for d in batch]
            total += int(indexer.addRawDocuments(raw))
            if progress is not None:
                progress(len(batch))
    finally:
        indexer.close()
    old = target.with_name(target.name + ".old")
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return total


class LuceneSearcher:
    """BM25 searcher over an index built by :func:`build_lucene`; the results (ids, scores,
    order) are those of Anserini's ``SimpleSearcher.search`` with the same settings."""

    def __init__(self, path: Path, lexical: LexicalSettings, java_home: str | None) -> None:
        autoclass = start_jvm(java_home)
        from jnius import cast as jcast

        self._h = Handles(autoclass)
        self._int_buffer = autoclass("java.nio.IntBuffer")
        file = autoclass("java.io.File")(str(path))
        self._directory = autoclass("org.apache.lucene.store.FSDirectory").open(file.toPath())
        self._reader = autoclass("org.apache.lucene.index.DirectoryReader").open(self._directory)
        searcher = autoclass("org.apache.lucene.search.IndexSearcher")(
            jcast("org.apache.lucene.index.IndexReader", self._reader)
        )
        bm25 = autoclass("org.apache.lucene.search.similarities.BM25Similarity")(float(lexical.k1), float(lexical.b))
        searcher.setSimilarity(bm25)
        analyzer = autoclass("io.anserini.analysis.DefaultEnglishAnalyzer").fromArguments(
            lexical.stemmer, lexical.keep_stopwords, None
        )
        generator = autoclass("io.anserini.search.query.BagOfWordsQueryGenerator")()
        sort_field = autoclass("org.apache.lucene.search.SortField")
        # SimpleSearcher.BREAK_SCORE_TIES_BY_DOCID: score, then the external id
        sort = autoclass("org.apache.lucene.search.Sort")(
            sort_field.FIELD_SCORE, sort_field(ID, autoclass("org.apache.lucene.search.SortField$Type").STRING_VAL)
        )
        self._topk = _topk_handle(self._h, searcher, generator, analyzer, sort)
        self._stored_ids = _stored_ids_handle(self._h)
        self._ids: list[str | None] = [None] * int(self._reader.maxDoc())

    def search(self, queries: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        """Top-``k`` ``(docid, score)`` for each query, in order (one JNI call for all)."""
        if not queries:
            return []
        rows = self._h.call(self._topk, self._h.strings(queries), str(k))
        hits = [np.asarray(row, dtype=np.float64).reshape(-1, 2) for row in rows]  # (doc, score) pairs
        docs = [h[:, 0].astype(np.int64).tolist() for h in hits]
        self._resolve([d for row in docs for d in row])
        ids = cast(list[str], self._ids)  # every doc returned is resolved now
        return [
            [(ids[d], s) for d, s in zip(row, anserini_ties(h[:, 1].astype(np.float32)).tolist(), strict=True)]
            for row, h in zip(docs, hits, strict=True)
        ]

    def _resolve(self, docs: list[int]) -> None:
        """Read the external ids of ``docs`` not yet known (one JNI call)."""
        missing = sorted({d for d in docs if self._ids[d] is None})
        if missing:
            found = self._h.call(self._stored_ids, self._reader.storedFields(), self._int_buffer.wrap(missing))
            for doc, doc_id in zip(missing, found, strict=True):
                self._ids[doc] = doc_id

    def close(self) -> None:
        self._reader.close()
        self._directory.close()


def anserini_ties(scores: np.ndarray) -> np.ndarray:
    """``scores`` (float32, ranked) as Anserini's ``ScoreTiesAdjusterReranker`` leaves them,
    which ``SimpleSearcher.search`` runs on every result: each rounded half up to 4
    decimals, then a score within ``TIE`` of the (adjusted) one before it is lowered by
    ``STEP`` times its place in that run. Computed in float32 step by step, as Java does;
    only runs of near-equal scores take the Python loop."""
    scaled = scores.astype(np.float64) * 10000.0
    whole = np.floor(scaled)
    rounded = ((whole + (scaled - whole >= 0.5)) / 10000.0).astype(np.float32)  # Math.round, then d2f
    out = rounded.copy()
    # Where a run may start: the score before is not lowered, so the test is on rounded values.
    starts = (np.flatnonzero(rounded[:-1] - rounded[1:] <= TIE) + 1).tolist()
    i = 0  # scores before i are final
    for start in starts:
        if start <= i:
            continue  # inside the run just done
        i, dup = start, 0
        while i < len(out):
            dup = dup + 1 if out[i - 1] - rounded[i] <= TIE else 0
            if dup == 0:
                break
            out[i] = rounded[i] - STEP * np.float32(dup)
            i += 1
    return out


def _topk_handle(h: Handles, searcher: Any, generator: Any, analyzer: Any, sort: Any) -> Any:
    """``(List<String> queries, String k) -> double[][]``: for each query, ``[doc, score,
    doc, score, ...]`` of ``searcher.search(generator.buildQuery(CONTENTS, analyzer, q), k,
    sort, true)``, as SimpleSearcher.search runs it."""
    query = h.cls("org.apache.lucene.search.Query")
    top_field_docs = h.cls("org.apache.lucene.search.TopFieldDocs")
    score_docs = h.cls("[Lorg.apache.lucene.search.ScoreDoc;")
    score_doc = h.cls("org.apache.lucene.search.ScoreDoc")
    doubles, rows, strings = h.cls("[D"), h.cls("[[D"), h.cls("java.util.List")
    build = h.virtual(generator.getClass(), "buildQuery", query, h.string, h.cls(ANALYZER), h.string)
    build = h.mh.insertArguments(build, 0, generator, CONTENTS, analyzer)  # (String)Query
    search = h.virtual(searcher.getClass(), "search", top_field_docs, query, h.int, h.cls(SORT), h.boolean)
    search = h.bind_bool(h.mh.insertArguments(h.mh.insertArguments(search, 0, searcher), 2, sort), 2, True)
    top = h.mh.filterArguments(search, 0, build)  # (String, int)TopFieldDocs
    get_hits = h.lookup.findGetter(h.cls("org.apache.lucene.search.TopDocs"), "scoreDocs", score_docs)
    top = h.mh.filterReturnValue(top, get_hits.asType(h.type(score_docs, top_field_docs)))  # (String, int)ScoreDoc[]
    # ScoreDoc[] -> double[]: doc and score of hit i at 2i and 2i + 1
    add = h.static(h.cls("java.lang.Math"), "addExact", h.int, h.int, h.int)
    twice = h.mh.permuteArguments(add, h.type(h.int, h.int), 0, 0)
    after = h.mh.filterReturnValue(twice, h.static(h.cls("java.lang.Math"), "incrementExact", h.int, h.int))
    hit = h.mh.arrayElementGetter(score_docs)  # (ScoreDoc[], int)ScoreDoc

    def field(name: str, kind: Any) -> Any:  # (ScoreDoc[], int)double
        getter = h.lookup.findGetter(score_doc, name, kind).asType(h.type(h.double, score_doc))
        return h.mh.filterReturnValue(hit, getter)

    length = h.mh.arrayLength(score_docs)
    pack = h.fill(
        doubles,
        length,
        h.mh.filterReturnValue(length, twice),
        h.put(doubles, twice, field("doc", h.int)),
        h.put(doubles, after, field("score", h.float)),
    )
    one = h.mh.filterReturnValue(top, pack)  # (String, int k)double[]
    text = h.virtual(strings, "get", h.cls("java.lang.Object"), h.int).asType(h.type(h.string, strings, h.int))
    row = h.mh.collectArguments(one, 0, text)  # (List, int i, int k)double[]
    row = h.mh.permuteArguments(row, h.type(doubles, strings, h.int, h.int), 0, 2, 1)  # (List, int k, int i)
    size = h.mh.dropArguments(h.virtual(strings, "size", h.int), 1, h.int)  # (List, int k)int
    batch = h.fill(rows, size, size, h.put(rows, None, row))
    return h.mh.filterArguments(batch, 1, h.static(h.cls("java.lang.Integer"), "parseInt", h.int, h.string))


def _stored_ids_handle(h: Handles) -> Any:
    """``(StoredFields, IntBuffer docs) -> String[]``: the stored ``id`` of each doc."""
    stored = h.cls("org.apache.lucene.index.StoredFields")
    document = h.cls("org.apache.lucene.document.Document")
    ints, strings = h.cls("[I"), h.cls("[Ljava.lang.String;")
    get_id = h.mh.insertArguments(h.virtual(document, "get", h.string, h.string), 1, ID)
    id_of = h.mh.filterReturnValue(h.virtual(stored, "document", document, h.int), get_id)  # (StoredFields, int)
    value = h.mh.collectArguments(id_of, 1, h.mh.arrayElementGetter(ints))  # (StoredFields, int[], int)String
    count = h.mh.dropArguments(h.mh.arrayLength(ints), 0, stored)
    ids = h.fill(strings, count, count, h.put(strings, None, value))
    return h.mh.filterArguments(ids, 1, h.virtual(h.cls("java.nio.IntBuffer"), "array", ints))
