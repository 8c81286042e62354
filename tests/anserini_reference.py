"""The reference the embedded BM25 path is held to: Anserini's own ``SimpleSearcher.search``,
one query at a time, as hybrid searched before it called Lucene directly."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hybrid.config import LexicalSettings
from hybrid.java import start_jvm


def simple_search(
    path: Path, lexical: LexicalSettings, queries: Sequence[str], k: int
) -> list[list[tuple[str, float]]]:
    """Top-``k`` ``(docid, score)`` of each query through ``SimpleSearcher.search``."""
    autoclass = start_jvm()
    searcher = autoclass("io.anserini.search.SimpleSearcher")(str(path))
    try:
        analyzer = autoclass("io.anserini.analysis.DefaultEnglishAnalyzer")
        searcher.set_analyzer(analyzer.fromArguments(lexical.stemmer, lexical.keep_stopwords, None))
        searcher.set_bm25(float(lexical.k1), float(lexical.b))
        return [[(h.docid, float(h.score)) for h in searcher.search(q, k)] for q in queries]
    finally:
        searcher.close()
