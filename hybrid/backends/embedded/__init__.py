"""Embedded default backend: Lucene BM25 through pyserini's Anserini + FAISS + SQLite.

Everything for one index lives in one directory and can be reopened later; versions are
swapped by replacing a one-line ``CURRENT`` file atomically.
"""

from __future__ import annotations

from hybrid.backends.embedded.backend import EmbeddedBackend, EmbeddedWriter

__all__ = ["EmbeddedBackend", "EmbeddedWriter"]
