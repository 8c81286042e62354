"""``hybrid quickstart``: index a corpus (default: the shipped synthetic demo) and search it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import (
    BackendOptions,
    LimitOpt,
    QuietOpt,
    backend_options,
    console,
    handle_errors,
)
from .index import report, run_with_progress
from .search import print_hits

QUERY_FILES = ("queries.jsonl", "queries.jsonl.gz", "queries.tsv", "queries.dev.tsv", "queries.tsv.gz")


@handle_errors
@backend_options
def quickstart(
    corpus: Annotated[
        Path | None, typer.Argument(help="Corpus to index (default: the shipped synthetic demo corpus).")
    ] = None,
    index: Annotated[str, typer.Option("--index", "-i", help="Index name.")] = "quickstart",
    query: Annotated[
        list[str] | None, typer.Option("--query", help="Query to run (repeatable) (default: a few from the dataset).")
    ] = None,
    k: Annotated[int, typer.Option("-k", help="Hits per query.")] = 3,
    limit: LimitOpt = None,
    conn: BackendOptions = BackendOptions(),
    quiet: QuietOpt = False,
) -> None:
    """Index a corpus with the default model, then show BM25, dense and hybrid hits side by side."""
    from hybrid.corpus import read_queries, resolve_corpus
    from hybrid.data import demo_corpus, demo_queries
    from hybrid.encoder import Encoder
    from hybrid.indexing import IndexJob
    from hybrid.search import SearchConfig, Searcher
    from hybrid.types import SearchMode

    if corpus is None:
        console.print("[dim]Using the shipped demo corpus (35 synthetic passages written for this demo).[/dim]")
        corpus = demo_corpus()
        queries_file: Path | None = demo_queries()
    else:
        resolve_corpus(corpus)
        queries_file = _find_queries(corpus)
    texts = list(query or [])
    if not texts and queries_file is not None:
        texts = [q.text for q in read_queries(queries_file)[:3]]
    es = conn.es_config()
    backend = conn.open()
    try:
        encoder = Encoder()
        stats = run_with_progress(IndexJob(corpus=corpus, index=index, limit=limit), backend, encoder, quiet)
        report(stats, index, backend.kind, as_json=False)
        searcher = Searcher(backend, index, encoder)
        for text in texts:
            console.rule(f"[bold]{text}")
            modes: tuple[SearchMode, ...] = ("bm25", "dense", "hybrid")
            for mode in modes:
                hits = searcher.search([text], SearchConfig(mode=mode, k=k))[0]
                print_hits(hits, mode, as_json=False)
    finally:
        backend.close()
    where = f"--es-url {es.display_url}" if es else f"--store {conn.store}" if conn.store else ""
    console.print(f'\nNext: hybrid search "your question" --index {index} {where}'.rstrip())


def _find_queries(corpus: Path) -> Path | None:
    folder = corpus if corpus.is_dir() else corpus.parent
    for name in QUERY_FILES:
        if (folder / name).is_file():
            return folder / name
    return None
