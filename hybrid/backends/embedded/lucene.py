"""BM25 through Anserini's Lucene classes (pyserini's engine), called via pyjnius."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from hybrid.config import LexicalSettings
from hybrid.java import searched, start_jvm
from hybrid.types import Document

INDEX_THREADS = 2


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
    """BM25 searcher over an index built by :func:`build_lucene`, analyzer matched."""

    def __init__(self, path: Path, lexical: LexicalSettings, java_home: str | None) -> None:
        autoclass = start_jvm(java_home)
        self._list = autoclass("java.util.ArrayList")
        analyzer_cls = autoclass("io.anserini.analysis.DefaultEnglishAnalyzer")
        self.searcher: Any = autoclass("io.anserini.search.SimpleSearcher")(str(path))
        self.searcher.set_analyzer(analyzer_cls.fromArguments(lexical.stemmer, lexical.keep_stopwords, None))
        self.searcher.set_bm25(float(lexical.k1), float(lexical.b))

    def search(self, queries: Sequence[str], k: int, threads: int = 2) -> list[list[tuple[str, float]]]:
        """Top-``k`` ``(docid, score)`` for each query, in order."""
        searched()
        if len(queries) == 1:
            return [[(h.docid, float(h.score)) for h in self.searcher.search(queries[0], k)]]
        texts, qids = self._list(), self._list()
        for i, q in enumerate(queries):
            texts.add(q)
            qids.add(str(i))
        found = self.searcher.batch_search(texts, qids, k, threads)
        return [[(h.docid, float(h.score)) for h in found.get(str(i))] for i in range(len(queries))]

    def close(self) -> None:
        self.searcher.close()
