"""Corpus, queries and qrels readers. Streaming and gzip-transparent.

``open_corpus(path, fmt)`` returns an iterable of :class:`~hybrid.types.Document`;
formats: ``beir``, ``msmarco``, ``dpr``, ``jsonl`` (detected from the path when not given).
"""

from __future__ import annotations

from hybrid.corpus.detect import FORMATS, open_corpus, resolve_corpus
from hybrid.corpus.readers import CorpusReader, JsonlFields
from hybrid.corpus.topics import (
    Qrels,
    iter_answers,
    iter_qrels,
    iter_queries,
    read_answers,
    read_qrels,
    read_queries,
)

__all__ = [
    "FORMATS",
    "CorpusReader",
    "JsonlFields",
    "Qrels",
    "iter_answers",
    "iter_qrels",
    "iter_queries",
    "open_corpus",
    "read_answers",
    "read_qrels",
    "read_queries",
    "resolve_corpus",
]
