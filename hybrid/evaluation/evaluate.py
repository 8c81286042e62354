"""``hybrid eval``'s job: search every query in batches, write the run, compute metrics."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hybrid.backends.base import Backend
from hybrid.corpus import Qrels, read_answers, read_qrels, read_queries
from hybrid.errors import ConfigError
from hybrid.evaluation.metrics import (
    auto_relevance_level,
    dpr_accuracy,
    metrics_for_depth,
    msmarco_mrr10,
    trec_metrics,
)
from hybrid.evaluation.runs import RUN_FORMATS, Run, canonical, write_dpr, write_msmarco, write_trec
from hybrid.search import SearchConfig, Searcher
from hybrid.types import Query

log = logging.getLogger(__name__)
HYGIENE_CHUNK = 1000


@dataclass(frozen=True)
class EvalJob:
    """What to evaluate. ``qrels`` and/or ``answers`` (DPR qa file) must be given."""

    index: str
    queries: Path
    qrels: Path | None = None
    answers: Path | None = None
    search: SearchConfig = field(default_factory=lambda: SearchConfig(mode="hybrid", k=1000))
    run_format: str | None = None  # trec | msmarco | dpr; default from the data
    run_path: Path | None = None
    relevance_level: int | None = None  # None: auto from the qrels' grades
    exclude_self: bool = False
    batch_size: int = 64
    dpr_ks: tuple[int, ...] = (5, 20, 100)
    regex: bool = False
    java_home: str | None = None

    def __post_init__(self) -> None:
        if self.qrels is None and self.answers is None and not _is_dpr_qa(self.queries):
            raise ConfigError("eval needs --qrels, or answers (a DPR qa file as --queries or --answers)")
        if self.run_format is not None and self.run_format not in RUN_FORMATS:
            raise ConfigError(f"unknown run format '{self.run_format}'; choose one of {', '.join(RUN_FORMATS)}")
        if self.batch_size < 1:
            raise ConfigError("--batch-size must be at least 1")


@dataclass
class EvalReport:
    """Everything ``--json`` writes; ``per_query`` feeds ``--compare``."""

    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    config: dict[str, Any]
    index: str
    index_version: str
    backend: str
    model: str
    queries: int
    timings: dict[str, float]
    warnings: list[str]
    run_file: str | None  # None: no --run given, the run was not kept
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_eval(
    job: EvalJob, backend: Backend, searcher: Searcher | None = None, progress: Callable[[int, int], None] | None = None
) -> EvalReport:
    """Run ``job`` against ``backend``; returns the report (the run file is written too)."""
    started = time.perf_counter()
    warnings: list[str] = []
    queries = read_queries(job.queries)
    answers = _answers(job)
    qrels: Qrels = read_qrels(job.qrels) if job.qrels else {}
    queries = _select_queries(queries, qrels, answers, warnings)
    if qrels:
        _check_qrels_docs(backend, job.index, qrels, warnings)
    info = backend.info(job.index)
    searcher = searcher or Searcher(backend, job.index, batch=True)
    fmt = job.run_format or ("dpr" if answers else "trec")
    # passage texts only for the DPR run (answer matching); a TREC run needs ids and scores
    run, texts, search_seconds = _search_all(job, searcher, queries, progress, with_texts=fmt == "dpr")

    t0 = time.perf_counter()
    level = job.relevance_level or (auto_relevance_level(qrels) if qrels else 1)
    scored = _Scored(run, qrels, answers, texts, {q.id: q.text for q in queries}, level)
    if job.run_path is not None:
        job.run_path.parent.mkdir(parents=True, exist_ok=True)
        metrics, per_query = _score_and_write(job, fmt, scored, job.run_path)
    else:  # the run is only needed while scoring: nothing is left behind
        with tempfile.TemporaryDirectory(prefix="hybrid-run-") as tmp:
            metrics, per_query = _score_and_write(job, fmt, scored, Path(tmp) / f"run.{fmt}")
    for warning in warnings:
        log.warning(warning)
    return EvalReport(
        metrics={k: round(v, 6) for k, v in metrics.items()},
        per_query=per_query,
        config={**_config_dict(job), "relevance_level": level, "run_format": fmt},
        index=job.index,
        index_version=info.version,
        backend=backend.kind,
        model=info.model,
        queries=len(queries),
        timings={
            "search_s": round(search_seconds, 3),
            "queries_per_s": round(len(queries) / search_seconds, 2) if search_seconds else 0.0,
            "metrics_s": round(time.perf_counter() - t0, 3),
            "total_s": round(time.perf_counter() - started, 3),
        },
        warnings=warnings,
        run_file=str(job.run_path) if job.run_path is not None else None,
    )


@dataclass(frozen=True)
class _Scored:
    """What scoring a run needs besides the job."""

    run: Any
    qrels: Qrels
    answers: dict[str, list[str]]
    texts: Any
    query_texts: dict[str, str]
    level: int


def _score_and_write(
    job: EvalJob, fmt: str, s: _Scored, run_path: Path
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Write the run to ``run_path`` in ``fmt``; returns (metrics, per-query metrics)."""
    metrics: dict[str, float] = {}
    per_query: dict[str, dict[str, float]] = {}
    if s.qrels:
        metrics, per_query = trec_metrics(
            s.qrels, s.run, metrics_for_depth(job.search.k), relevance_level=s.level, java_home=job.java_home
        )
    if fmt == "dpr":
        flags = write_dpr(s.run, run_path, s.query_texts, s.answers, s.texts, regex=job.regex)
        acc, acc_q = dpr_accuracy(flags, job.dpr_ks)
        metrics.update(acc)
        for qid, values in acc_q.items():
            per_query.setdefault(qid, {}).update(values)
    elif fmt == "msmarco":
        write_msmarco(s.run, run_path)
        metrics["msmarco_mrr@10"], _ = msmarco_mrr10(s.qrels, s.run, s.level)
    else:
        write_trec(s.run, run_path, tag=f"hybrid-{job.search.mode}")
    return metrics, per_query


def _search_all(
    job: EvalJob,
    searcher: Searcher,
    queries: list[Query],
    progress: Callable[[int, int], None] | None,
    with_texts: bool = True,
) -> tuple[Run, dict[str, tuple[str, str]], float]:
    config = replace(job.search, texts=with_texts)
    if job.exclude_self:  # one extra hit so dropping the query's own document keeps k
        config = replace(config, k=config.k + 1)
    run: Run = {}
    texts: dict[str, tuple[str, str]] = {}
    seconds = 0.0
    for start in range(0, len(queries), job.batch_size):
        batch = queries[start : start + job.batch_size]
        t0 = time.perf_counter()
        results = searcher.search([q.text for q in batch], config)
        seconds += time.perf_counter() - t0
        for query, hits in zip(batch, results, strict=True):
            kept = [h for h in hits if not (job.exclude_self and h.id == query.id)][: job.search.k]
            run[query.id] = canonical([(h.id, h.score) for h in kept])
            for h in kept:
                texts.setdefault(h.id, (h.title or "", h.text or ""))
        if progress is not None:
            progress(min(start + job.batch_size, len(queries)), len(queries))
    return run, texts, seconds


def _answers(job: EvalJob) -> dict[str, list[str]]:
    if job.answers is not None:
        return read_answers(job.answers)
    return read_answers(job.queries) if _is_dpr_qa(job.queries) else {}


def _select_queries(
    queries: list[Query], qrels: Qrels, answers: dict[str, list[str]], warnings: list[str]
) -> list[Query]:
    labelled = set(qrels) | set(answers)
    kept = [q for q in queries if q.id in labelled]
    if len(kept) < len(queries):
        warnings.append(
            f"{len(queries) - len(kept)} of {len(queries)} queries have no qrels or answers; they are not evaluated"
        )
    missing = labelled - {q.id for q in queries}
    if missing:
        warnings.append(f"{len(missing)} queries in the qrels have no query text; they count as 0 (trec_eval -c)")
    if not kept:
        raise ConfigError("no query has qrels or answers: check that the query ids match the qrels")
    return kept


def _check_qrels_docs(backend: Backend, index: str, qrels: Qrels, warnings: list[str]) -> None:
    judged = sorted({d for docs in qrels.values() for d, g in docs.items() if g > 0})
    found = 0
    for start in range(0, len(judged), HYGIENE_CHUNK):
        found += len(backend.get(index, judged[start : start + HYGIENE_CHUNK]))
    if found < len(judged):
        warnings.append(
            f"{len(judged) - found} of {len(judged)} relevant documents in the qrels are not in "
            f"index '{index}'; recall cannot reach 1"
        )


def _is_dpr_qa(path: Path) -> bool:
    try:
        read_answers(path)
    except Exception:
        return False
    return True


def _config_dict(job: EvalJob) -> dict[str, Any]:
    data = asdict(job)
    for key, value in list(data.items()):
        if isinstance(value, Path):
            data[key] = str(value)
    return data
