"""The embedded store's BM25 path (Lucene's IndexSearcher, one JNI call per batch) against
Anserini's own SimpleSearcher.search: the same ids in the same order, the same scores."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hybrid.backends.embedded import EmbeddedBackend
from hybrid.backends.embedded.lucene import LuceneSearcher, anserini_ties, build_lucene
from hybrid.backends.embedded.method_handles import Handles
from hybrid.config import LexicalSettings
from hybrid.indexing import IndexJob, run_index
from hybrid.java import start_jvm
from hybrid.types import Document
from tests.anserini_reference import simple_search

SPECIAL = 'title:(heart) AND "bread yeast"~2 +ocean -tides* \\ / [a TO z] {b} ^2 ! ? : && || sun~ bee?s'
HARD = ["", "   ", "the of and a to", "THE", SPECIAL, "ocean ocean ocean tides", "électricité naïve", "x" * 300]
SETTINGS = [
    LexicalSettings(),
    LexicalSettings(k1=1.2, b=0.75, stemmer="krovetz", keep_stopwords=True),
    LexicalSettings(k1=0.0, b=0.0, stemmer="none"),  # every matching document ties on term counts
]


def _docs(corpus: Path) -> list[Document]:
    rows = [json.loads(line) for line in corpus.open()]
    return [Document(id=r["_id"], title=r.get("title", ""), text=r["text"]) for r in rows]


def _build(path: Path, docs: list[Document], lexical: LexicalSettings, batch: int = 5) -> Path:
    build_lucene(path, (docs[i : i + batch] for i in range(0, len(docs), batch)), lexical, None)
    return path


def _same(path: Path, lexical: LexicalSettings, queries: list[str], k: int) -> list[list[tuple[str, float]]]:
    """Search ``queries`` both ways; assert identical results and return them."""
    searcher = LuceneSearcher(path, lexical, None)
    try:
        got = searcher.search(queries, k)
        one_by_one = [searcher.search([q], k)[0] for q in queries]
    finally:
        searcher.close()
    want = simple_search(path, lexical, queries, k)
    assert [[d for d, _ in row] for row in got] == [[d for d, _ in row] for row in want]
    for row, ref in zip(got, want, strict=True):
        assert np.allclose([s for _, s in row], [s for _, s in ref], rtol=0, atol=1e-6)
    assert got == want == one_by_one  # exactly: the same float32 arithmetic
    return got


@pytest.mark.parametrize("lexical", SETTINGS, ids=["default", "krovetz-stopwords", "flat"])
def test_fixture_queries_rank_as_anserini_does(tmp_path: Path, beir_small: Path, lexical: LexicalSettings) -> None:
    path = _build(tmp_path / "lucene", _docs(beir_small / "corpus.jsonl"), lexical)
    queries = [json.loads(line)["text"] for line in (beir_small / "queries.jsonl").open()]
    for k in (1, 3, 12, 50):  # 50: more than the 12 documents
        got = _same(path, lexical, queries + HARD, k)
        assert all(len(row) <= min(k, 12) for row in got)
    blank = _same(path, lexical, HARD, 10)[:4]  # empty, spaces, stop words, a stop word in capitals
    assert blank == [[], [], [], []] if not lexical.keep_stopwords else blank[:2] == [[], []]


def test_ties_are_broken_by_external_id_and_kept_strictly_ordered(tmp_path: Path) -> None:
    ids = ["d10", "b2", "Z", "a1", "é", "c3", "a10"]  # indexed out of order
    docs = [Document(id=i, text="solar panel") for i in ids] + [Document(id="x", text="solar panel panel")]
    path = _build(tmp_path / "lucene", docs, LexicalSettings(), batch=3)
    got = _same(path, LexicalSettings(), ["solar panel", "panel"], 5)
    tied = [d for d, _ in got[0][1:]]
    assert got[0][0][0] == "x" and tied == sorted(ids, key=lambda s: s.encode())[:4]
    scores = [s for _, s in got[0][1:]]
    assert all(a > b for a, b in itertools.pairwise(scores))  # 1e-6 apart, not equal


def test_a_large_batch_over_many_segments_matches(tmp_path: Path) -> None:
    from tests.conftest import synthetic_corpus

    docs = _docs(synthetic_corpus(tmp_path / "corpus.jsonl", 1500, seed=3))
    path = _build(tmp_path / "lucene", docs, LexicalSettings(), batch=100)
    assert len(list(path.glob("*.si"))) > 1  # doc ids and the id sort across segments
    rng = random.Random(5)
    words = [w for d in docs[:50] for w in d.text.split()]
    queries = [" ".join(rng.choices(words, k=rng.randint(1, 6))) for _ in range(70)]
    got = _same(path, LexicalSettings(), queries, 100)
    assert sum(len(row) for row in got) > 3000


def test_concurrent_batches_from_threads_get_their_own_results(tmp_path: Path, beir_small: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    path = _build(tmp_path / "lucene", _docs(beir_small / "corpus.jsonl"), LexicalSettings())
    queries = [json.loads(line)["text"] for line in (beir_small / "queries.jsonl").open()] + HARD
    batches = [queries[i:] + queries[:i] for i in range(len(queries))]  # each thread its own order
    want = simple_search(path, LexicalSettings(), queries, 10)
    searcher = LuceneSearcher(path, LexicalSettings(), None)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda batch: searcher.search(batch, 10), batches * 3))
    searcher.close()
    for i, got in enumerate(results):
        shift = i % len(queries)
        assert got == want[shift:] + want[:shift]


def _java_ties(h: Handles, scores: list[float]) -> list[float]:
    """Anserini's ScoreTiesAdjusterReranker itself, on ``scores``."""
    holder = h.cls("io.anserini.search.ScoredDocs")
    floats, documents = h.cls("[F"), h.cls("[Lorg.apache.lucene.document.Document;")
    unwrap = h.virtual(h.cls("java.nio.FloatBuffer"), "array", floats)
    set_scores = h.mh.filterArguments(h.lookup.findSetter(holder, "scores", floats), 1, unwrap)
    set_docs = h.lookup.findSetter(holder, "lucene_documents", documents)
    set_docs = h.mh.filterArguments(set_docs, 1, h.mh.arrayConstructor(documents))
    scored = h.autoclass("io.anserini.search.ScoredDocs")()
    h.call(set_scores, scored, h.autoclass("java.nio.FloatBuffer").wrap(scores))
    h.call(h.bind_int(set_docs, 1, len(scores)), scored)
    reranked = h.autoclass("io.anserini.rerank.lib.ScoreTiesAdjusterReranker")().rerank(scored, None)
    return [float(s) for s in reranked.scores]


def test_score_rounding_matches_anserinis_reranker() -> None:
    h = Handles(start_jvm(None))
    rng = np.random.default_rng(7)
    cases: list[Any] = [
        [5.00015, 5.00005, 5.0, 4.99995, 4.9999, 4.9998, 3.0],  # runs one rounding step apart
        [20.0] * 150 + [19.9999] * 3,  # a long run, where float32 steps are coarser than 1e-6
        [7.12345] * 3 + [7.1234] + [2.5, 2.49995, 2.5 - 2e-4],
        [1e-5, 5e-5, 0.0],
        [42.0],
    ]
    for size, scale in ((100, 30.0), (1000, 12.0), (300, 0.01)):
        values = np.sort(np.round(rng.random(size) * scale, rng.integers(3, 6)))[::-1]
        cases.append(values.tolist())
    for case in cases:
        scores = np.asarray(case, dtype=np.float32)
        assert anserini_ties(scores).tolist() == _java_ties(h, scores.tolist()), case[:5]


def test_backend_bm25_and_hybrid_sides_match(tmp_path: Path, tiny_encoder: Any, beir_small: Path) -> None:
    backend = EmbeddedBackend(tmp_path / "store")
    run_index(IndexJob(corpus=beir_small, index="idx"), backend, tiny_encoder)
    lucene = tmp_path / "store" / "idx" / str(backend.current("idx")) / "lucene"
    queries = [json.loads(line)["text"] for line in (beir_small / "queries.jsonl").open()] * 10 + HARD
    want = simple_search(lucene, LexicalSettings(), queries, 20)
    hits = backend.bm25("idx", queries, 20)
    assert [[(h.id, h.score) for h in row] for row in hits] == want
    assert all(h.text for row in hits for h in row)
    lexical, dense = backend.bm25_and_knn("idx", queries, tiny_encoder.encode_queries(queries), 20)
    assert [[(h.id, h.score) for h in row] for row in lexical] == want
    assert len(dense) == len(queries)
    backend.close()
