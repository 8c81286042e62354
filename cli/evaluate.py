"""``hybrid eval``: run every query, write a run file, report pyserini's metrics."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .common import (
    BackendOptions,
    QuietOpt,
    backend_options,
    console,
    err_console,
    handle_errors,
)
from .search import BM25WeightOpt, DenseWeightOpt, DepthOpt, FusionOpt, ModeOpt, NormOpt, RrfKOpt, fusion_config


@handle_errors
@backend_options
def evaluate(
    reports: Annotated[
        list[Path] | None,
        typer.Argument(help="With --compare: eval reports (JSON) to compare; the first is the baseline."),
    ] = None,
    compare: Annotated[
        bool, typer.Option("--compare", help="Compare eval reports instead of running an evaluation.")
    ] = False,
    index: Annotated[str | None, typer.Option("--index", "-i", help="Index name.")] = None,
    queries: Annotated[
        Path | None,
        typer.Option("--queries", help="Queries: BEIR queries.jsonl, 'qid<TAB>text' tsv, or a DPR qa file."),
    ] = None,
    qrels: Annotated[Path | None, typer.Option("--qrels", help="Qrels: TREC, MS MARCO or BEIR tsv.")] = None,
    answers: Annotated[
        Path | None, typer.Option("--answers", help="DPR qa file with answers (when --queries is not one).")
    ] = None,
    mode: ModeOpt = "hybrid",
    k: Annotated[int, typer.Option("-k", "--k", help="Run depth (hits per query).")] = 1000,
    fusion: FusionOpt = "rrf",
    rrf_k: RrfKOpt = 60.0,
    norm: NormOpt = "minmax",
    bm25_weight: BM25WeightOpt = 0.5,
    dense_weight: DenseWeightOpt = 0.5,
    depth: DepthOpt = 1000,
    num_candidates: Annotated[
        int | None, typer.Option("--num-candidates", help="kNN candidates (ES num_candidates / HNSW efSearch).")
    ] = None,
    run_format: Annotated[
        str | None, typer.Option("--run-format", help="trec, msmarco or dpr (default: dpr with answers, else trec).")
    ] = None,
    run: Annotated[Path | None, typer.Option("--run", help="Where to write the run file (default: not kept).")] = None,
    relevance_level: Annotated[
        int | None,
        typer.Option(
            "--relevance-level",
            help="Lowest grade counted relevant by MRR/recall/MAP (default: 2 for 0-3 graded qrels (TREC DL), else 1).",
        ),
    ] = None,
    exclude_self: Annotated[
        bool, typer.Option("--exclude-self", help="Drop a hit whose id equals the query id (e.g. ArguAna).")
    ] = False,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Queries per search batch (multi-search on ES).")
    ] = 64,
    as_json: Annotated[Path | None, typer.Option("--json", help="Write the JSON report here.")] = None,
    conn: BackendOptions = BackendOptions(),
    quiet: QuietOpt = False,
) -> None:
    """Evaluate an index on queries + qrels (or DPR answers) with trec_eval / pyserini's evaluators."""
    from hybrid.errors import ConfigError

    if compare:
        _compare(reports or [])
        return
    if reports:
        raise ConfigError("positional report files are only read with --compare")
    if index is None or queries is None:
        raise ConfigError("eval needs --index and --queries (or --compare A.json B.json ...)")
    from hybrid.evaluation.evaluate import EvalJob, run_eval
    from hybrid.search import SearchConfig

    config = SearchConfig(
        mode=mode,  # type: ignore[arg-type]  # validated by SearchConfig
        k=k,
        num_candidates=num_candidates,
        fusion=fusion_config(fusion, rrf_k, norm, bm25_weight, dense_weight, depth),
    )
    job = EvalJob(
        index=index,
        queries=queries,
        qrels=qrels,
        answers=answers,
        search=config,
        run_format=run_format,
        run_path=run,
        relevance_level=relevance_level,
        exclude_self=exclude_self,
        batch_size=batch_size,
        java_home=os.environ.get("JAVA_HOME"),
    )
    backend = conn.open()
    try:
        if quiet:
            report = run_eval(job, backend)
        else:
            with Progress(
                TextColumn("[bold]searching"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err_console,
            ) as bar:
                task = bar.add_task("searching", total=None)
                report = run_eval(
                    job, backend, progress=lambda done, total: bar.update(task, completed=done, total=total)
                )
    finally:
        backend.close()
    table = Table(title=f"{mode} · {index} ({report.backend}, {report.index_version}) · {report.queries} queries")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in report.metrics.items():
        table.add_row(name, f"{value:.4f}")
    table.add_row("queries/s", f"{report.timings['queries_per_s']:.1f}")
    console.print(table)
    for warning in report.warnings:
        err_console.print(f"Warning: {warning}", markup=False)
    if report.run_file is not None:
        console.print(f"run: {report.run_file}", markup=False, highlight=False)
    if as_json is not None:
        as_json.parent.mkdir(parents=True, exist_ok=True)
        as_json.write_text(json.dumps(report.to_dict(), indent=1) + "\n")
        console.print(f"report: {as_json}", markup=False, highlight=False)


def _compare(paths: list[Path]) -> None:
    from hybrid.evaluation.compare import compare

    rows = compare(paths)
    table = Table(title="Comparison against " + str(paths[0]))
    for col in ("metric", "report", "value", "delta", "p (paired randomization)", "queries"):
        table.add_column(col)
    for row in rows:
        p = "baseline" if row.p_value is None else f"{row.p_value:.4f}" + (" *" if row.p_value < 0.05 else "")
        table.add_row(row.metric, Path(row.report).name, f"{row.value:.4f}", f"{row.delta:+.4f}", p, str(row.queries))
    console.print(table)
