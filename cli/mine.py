"""``hybrid mine``: candidate pools (BM25 top-k union dense top-k) for training queries."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .common import (
    BackendOptions,
    IndexOpt,
    QueryModelOpt,
    QuietOpt,
    backend_options,
    console,
    handle_errors,
    progress_bar,
)

if TYPE_CHECKING:
    from hybrid.mining import MineJob, MineStats

Opt = typer.Option

QueriesOpt = Annotated[Path, Opt("--queries", help="Training queries (BEIR jsonl, tsv or DPR qa file).")]
OutOpt = Annotated[Path, Opt("--out", "-o", help="Pool file to write (.jsonl.gz).")]
QrelsOpt = Annotated[Path | None, Opt("--qrels", help="Qrels naming the positives.")]
AnswersOpt = Annotated[Path | None, Opt("--answers", help="DPR qa file: passages containing an answer are flagged.")]
BM25DepthOpt = Annotated[int, Opt("--bm25-depth", help="BM25 candidates per query.")]
KnnDepthOpt = Annotated[int, Opt("--knn-depth", help="Dense kNN candidates per query.")]
MinRelevanceOpt = Annotated[int, Opt("--min-relevance", help="Lowest qrels grade that is a positive.")]
BatchSizeOpt = Annotated[int, Opt("--batch-size", help="Queries per batch (and per part file).")]
NumCandidatesOpt = Annotated[int | None, Opt("--num-candidates", help="kNN candidates searched.")]
RecreateOpt = Annotated[bool, Opt("--recreate", help="Mine again over an existing pool file.")]


@handle_errors
@backend_options
def mine(
    index: IndexOpt,
    queries: QueriesOpt,
    out: OutOpt,
    qrels: QrelsOpt = None,
    answers: AnswersOpt = None,
    bm25_depth: BM25DepthOpt = 100,
    knn_depth: KnnDepthOpt = 100,
    min_relevance: MinRelevanceOpt = 1,
    batch_size: BatchSizeOpt = 64,
    num_candidates: NumCandidatesOpt = None,
    model: QueryModelOpt = None,
    recreate: RecreateOpt = False,
    conn: BackendOptions = BackendOptions(),
    quiet: QuietOpt = False,
) -> None:
    """Mine candidate pools for training queries; re-running resumes an interrupted run."""
    from hybrid.mining import MineJob

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
    _summary(_run(job, conn, model, quiet), out)


def _run(job: MineJob, conn: BackendOptions, model: str | None, quiet: bool) -> MineStats:
    """Mine with the index's query encoder (or ``model``), drawing a progress bar unless ``quiet``."""
    from hybrid.mining import run_mine
    from hybrid.query_encoder import encoder_for_index

    backend = conn.open()
    try:
        encoder = encoder_for_index(backend, job.index, model, batch=True)
        if quiet:
            return run_mine(job, backend, encoder)
        columns = (
            TextColumn("[bold]mining"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with progress_bar(*columns) as bar:
            task = bar.add_task("mining", total=None)
            return run_mine(job, backend, encoder, lambda d, t: bar.update(task, completed=d, total=t))
    finally:
        backend.close()


def _summary(stats: MineStats, out: Path) -> None:
    """What was mined, as a table."""
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
