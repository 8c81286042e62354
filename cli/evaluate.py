"""``hybrid eval``: run every query, write a run file, report pyserini's metrics."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from hybrid.errors import ConfigError

from .common import (
    BackendOptions,
    NumCandidatesOpt,
    Params,
    QuietOpt,
    backend_options,
    console,
    err_console,
    handle_errors,
    option_group,
    progress_bar,
)
from .search import BM25WeightOpt, DenseWeightOpt, DepthOpt, FusionOpt, ModeOpt, NormOpt, RrfKOpt, fusion_config

if TYPE_CHECKING:
    from hybrid.evaluation.evaluate import EvalJob, EvalReport
    from hybrid.search import SearchConfig

Opt = typer.Option

ReportsArg = Annotated[
    list[Path] | None,
    typer.Argument(help="With --compare: eval reports (JSON) to compare; the first is the baseline."),
]
CompareOpt = Annotated[bool, Opt("--compare", help="Compare eval reports instead of running an evaluation.")]
IndexNameOpt = Annotated[str | None, Opt("--index", "-i", help="Index name.")]
QueriesOpt = Annotated[
    Path | None, Opt("--queries", help="Queries: BEIR queries.jsonl, 'qid<TAB>text' tsv, or a DPR qa file.")
]
QrelsOpt = Annotated[Path | None, Opt("--qrels", help="Qrels: TREC, MS MARCO or BEIR tsv.")]
AnswersOpt = Annotated[Path | None, Opt("--answers", help="DPR qa file with answers (when --queries is not one).")]
JsonOpt = Annotated[Path | None, Opt("--json", help="Write the JSON report here.")]

# The search each query runs.
_SEARCH: Params = [
    ("mode", ModeOpt, "hybrid"),
    ("k", Annotated[int, Opt("-k", "--k", help="Run depth (hits per query).")], 1000),
    ("fusion", FusionOpt, "rrf"),
    ("rrf_k", RrfKOpt, 60.0),
    ("norm", NormOpt, "minmax"),
    ("bm25_weight", BM25WeightOpt, 0.5),
    ("dense_weight", DenseWeightOpt, 0.5),
    ("depth", DepthOpt, 1000),
    ("num_candidates", NumCandidatesOpt, None),
]

# How the run is written and scored: the options that are EvalJob fields, named by field.
_RUN: Params = [
    (
        "run_format",
        Annotated[str | None, Opt("--run-format", help="trec, msmarco or dpr (default: dpr with answers, else trec).")],
        None,
    ),
    ("run_path", Annotated[Path | None, Opt("--run", help="Where to write the run file (default: not kept).")], None),
    (
        "relevance_level",
        Annotated[
            int | None,
            Opt(
                "--relevance-level",
                help="Lowest grade counted relevant by MRR/recall/MAP (default: 2 for 0-3 graded qrels (TREC DL), "
                "else 1).",
            ),
        ],
        None,
    ),
    (
        "exclude_self",
        Annotated[bool, Opt("--exclude-self", help="Drop a hit whose id equals the query id (e.g. ArguAna).")],
        False,
    ),
    ("batch_size", Annotated[int, Opt("--batch-size", help="Queries per search batch (multi-search on ES).")], 64),
]


@handle_errors
@backend_options
@option_group(_SEARCH, "search", dict)
@option_group(_RUN, "run_options", dict)
def evaluate(
    reports: ReportsArg = None,
    *,
    compare: CompareOpt = False,
    index: IndexNameOpt = None,
    queries: QueriesOpt = None,
    qrels: QrelsOpt = None,
    answers: AnswersOpt = None,
    search: dict[str, Any],
    run_options: dict[str, Any],
    as_json: JsonOpt = None,
    conn: BackendOptions = BackendOptions(),
    quiet: QuietOpt = False,
) -> None:
    """Evaluate an index on queries + qrels (or DPR answers) with trec_eval / pyserini's evaluators."""
    if compare:
        _compare(reports or [])
        return
    if reports:
        raise ConfigError("positional report files are only read with --compare")
    if index is None or queries is None:
        raise ConfigError("eval needs --index and --queries (or --compare A.json B.json ...)")
    from hybrid.evaluation.evaluate import EvalJob

    job = EvalJob(
        index=index,
        queries=queries,
        qrels=qrels,
        answers=answers,
        search=_search_config(search),
        java_home=os.environ.get("JAVA_HOME"),
        **run_options,
    )
    _summary(_run(job, conn, quiet), job, as_json)


def _search_config(options: dict[str, Any]) -> SearchConfig:
    """The search each query runs, from --mode … --num-candidates."""
    from hybrid.search import SearchConfig

    fusion = fusion_config(
        options["fusion"],
        options["rrf_k"],
        options["norm"],
        options["bm25_weight"],
        options["dense_weight"],
        options["depth"],
    )
    return SearchConfig(mode=options["mode"], k=options["k"], num_candidates=options["num_candidates"], fusion=fusion)


def _run(job: EvalJob, conn: BackendOptions, quiet: bool) -> EvalReport:
    """Run every query and score the run, drawing a progress bar unless ``quiet``."""
    from hybrid.evaluation.evaluate import run_eval

    backend = conn.open()
    try:
        if quiet:
            return run_eval(job, backend)
        columns = (TextColumn("[bold]searching"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with progress_bar(*columns) as bar:
            task = bar.add_task("searching", total=None)
            return run_eval(job, backend, progress=lambda done, total: bar.update(task, completed=done, total=total))
    finally:
        backend.close()


def _summary(report: EvalReport, job: EvalJob, as_json: Path | None) -> None:
    """The metrics as a table, the report's warnings, and where the run and the JSON report went."""
    table = Table(
        title=f"{job.search.mode} · {job.index} ({report.backend}, {report.index_version}) · {report.queries} queries"
    )
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
