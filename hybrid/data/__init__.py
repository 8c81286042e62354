"""Small synthetic demo data shipped with the package (see README.md beside it)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def demo_corpus() -> Path:
    """Path of the synthetic demo corpus (jsonl)."""
    return Path(str(resources.files(__name__).joinpath("demo_corpus.jsonl")))


def demo_queries() -> Path:
    """Path of the demo queries (``qid<TAB>text``)."""
    return Path(str(resources.files(__name__).joinpath("demo_queries.tsv")))
