"""``hybrid mine``: candidate pools (BM25 top-k union dense top-k) for training queries."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .common import (
    BackendOptions,
    IndexOpt,
    QuietOpt,
    backend_options,
    console,
    err_console,
    handle_errors,
)


@handle_errors
@backend_options
def mine(
    index: IndexOpt,
    queries: Annotated[Path, typer.Option("--queries", help="Training queries (BEIR jsonl, tsv or DPR qa file).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Pool file to write (.jsonl.gz).")],
    qrels: Annotated[Path | None, typer.Option("--qrels", help="Qrels naming the positives.")] = None,
    answers: Annotated[
        Path | None, typer.Option("--answers", help="DPR qa file: passages containing an answer are flagged.")
    ] = None,
    bm25_depth: Annotated[int, typer.Option("--bm25-depth", help="BM25 candidates per query.")] = 100,
    knn_depth: Annotated[int, typer.Option("--knn-depth", help="Dense kNN candidates per query.")] = 100,
    min_relevance: Annotated[int, typer.Option("--min-relevance", help="Lowest qrels grade that is a positive.")] = 1,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Queries per batch (and per part file).")] = 64,
    num_candidates: Annotated[int | None, typer.Option("--num-candidates", help="kNN candidates searched.")] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Query encoder (default: the index's model).")
    ] = None,
    recreate: Annotated[bool, typer.Option("--recreate", help="Mine again over an existing pool file.")] = False,
    conn: BackendOptions = BackendOptions(),
    quiet: QuietOpt = False,
) -> None:
    """Mine candidate pools for training queries; re-running resumes an interrupted run."""
    from hybrid.mining import MineJob, run_mine
    from hybrid.query_encoder import encoder_for_index

    job = MineJob(
        index=index,
        queries=queries,
        out=out,
        qrels=qrels,
        answers=answers,
        bm25_depth=bm25_depth,
        knn_depth=knn_depth,
        batch_size=batch_size,
        num_candidates=num_candidates,
        min_relevance=min_relevance,
        recreate=recreate,
    )
    backend = conn.open()
    try:
        encoder = encoder_for_index(backend, index, model, batch=True)
        if quiet:
            stats = run_mine(job, backend, encoder)
        else:
            columns = (
                TextColumn("[bold]mining"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            with Progress(*columns, console=err_console) as bar:
                task = bar.add_task("mining", total=None)
                stats = run_mine(job, backend, encoder, lambda d, t: bar.update(task, completed=d, total=t))
    finally:
        backend.close()
    table = Table(title=f"pools → {out}", show_header=False)
    for key, value in (
        ("queries", stats.queries),
        ("mined now / resumed", f"{stats.mined} / {stats.resumed}"),
        ("candidates (mean per query)", f"{stats.candidates / max(stats.mined, 1):.1f}"),
        ("likely false negatives flagged", stats.false_negatives),
        ("positives missing from the index", stats.missing_positives),
        ("seconds", f"{stats.seconds:.1f}"),
    ):
        table.add_row(key, str(value))
    console.print(table)
