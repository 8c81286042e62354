"""Metrics: trec_eval's (through pyserini's jar), MS MARCO MRR@10 and DPR top-k accuracy."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from hybrid.corpus import Qrels
from hybrid.evaluation.runs import Run, canonical, write_trec
from hybrid.evaluation.trec_eval import EvaluationError, trec_eval, write_trec_qrels

# Our metric name -> (trec_eval measure, its output name, run depth it is computed on)
TREC_MEASURES: dict[str, tuple[str, str, int | None]] = {
    "ndcg@10": ("ndcg_cut.10", "ndcg_cut_10", None),
    "mrr@10": ("recip_rank", "recip_rank", 10),
    "recall@100": ("recall.100", "recall_100", None),
    "recall@1000": ("recall.1000", "recall_1000", None),
    "map": ("map", "map", None),
}
DEFAULT_TREC_METRICS: tuple[str, ...] = tuple(TREC_MEASURES)


def auto_relevance_level(qrels: Qrels) -> int:
    """TREC DL's convention for 0-3 graded qrels (grade >= 2 is relevant), else 1."""
    top = max((g for docs in qrels.values() for g in docs.values()), default=1)
    return 2 if top >= 3 else 1


def trec_metrics(
    qrels: Qrels,
    run: Run,
    metrics: Sequence[str] = DEFAULT_TREC_METRICS,
    *,
    relevance_level: int = 1,
    java_home: str | None = None,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """``(mean over qrels queries, per query)`` for the given metric names via trec_eval.

    MRR@10 is trec_eval's ``recip_rank`` on the run cut at 10, as MS MARCO defines it.
    """
    by_depth: dict[int | None, list[str]] = {}
    for name in metrics:
        by_depth.setdefault(TREC_MEASURES[name][2], []).append(name)
    mean: dict[str, float] = {}
    per_query: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="hybrid-eval-") as tmp:
        qrels_file = write_trec_qrels(qrels, Path(tmp) / "qrels.txt")
        for depth, names in by_depth.items():
            run_file = write_trec(run, Path(tmp) / f"run-{depth}.trec", depth=depth)
            result = trec_eval(
                qrels_file,
                run_file,
                _merge_cutoffs([TREC_MEASURES[n][0] for n in names]),
                per_query=True,
                relevance_level=relevance_level,
                java_home=java_home,
            )
            for name in names:
                key = TREC_MEASURES[name][1]
                if key not in result.get("all", {}):
                    raise EvaluationError(f"trec_eval did not report {key}")
                mean[name] = result["all"][key]
                for qid, values in result.items():
                    if qid != "all" and key in values:
                        per_query.setdefault(qid, {})[name] = values[key]
    return {n: mean[n] for n in metrics}, per_query


def _merge_cutoffs(measures: list[str]) -> list[str]:
    """trec_eval keeps only the last ``-m recall.X``: pass ``recall.100,1000`` instead."""
    merged: dict[str, list[str]] = {}
    for measure in measures:
        base, _, cutoff = measure.partition(".")
        merged.setdefault(base, [])
        if cutoff:
            merged[base].append(cutoff)
    return [f"{base}.{','.join(cuts)}" if cuts else base for base, cuts in merged.items()]


def metrics_for_depth(depth: int, metrics: Sequence[str] = DEFAULT_TREC_METRICS) -> tuple[str, ...]:
    """The metrics a run of ``depth`` hits can support (no recall@1000 from 100 hits)."""
    return tuple(m for m in metrics if "@" not in m or int(m.split("@")[1]) <= depth)


def msmarco_mrr10(qrels: Qrels, run: Run, relevance_level: int = 1) -> tuple[float, dict[str, float]]:
    """MRR@10 as MS MARCO's official ``msmarco_eval.py`` computes it, offline.

    Mean over the queries in the qrels of 1/rank of the first relevant passage in the
    top 10 (0 when none), counting judged queries with no relevant passage as trec_eval
    ``-c`` does. The official script downloads at import; this is its equivalent,
    checked in the tests against trec_eval's ``recip_rank`` on the same run.
    """
    per_query: dict[str, float] = {}
    for qid, judged in qrels.items():
        relevant = {d for d, g in judged.items() if g >= relevance_level}
        per_query[qid] = 0.0
        for rank, (doc, _score) in enumerate(canonical(run.get(qid, []))[:10], start=1):
            if doc in relevant:
                per_query[qid] = 1.0 / rank
                break
    mean = sum(per_query.values()) / len(per_query) if per_query else 0.0
    return mean, per_query


def dpr_accuracy(
    flags: Mapping[str, Sequence[bool]], ks: Sequence[int] = (5, 20, 100)
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Top-k answer accuracy (pyserini's ``evaluate_dpr_retrieval``): a hit in the top k."""
    per_query: dict[str, dict[str, float]] = {}
    for qid, hits in flags.items():
        first = next((i for i, h in enumerate(hits) if h), None)
        per_query[qid] = {f"top{k}": float(first is not None and first < k) for k in ks}
    n = max(len(per_query), 1)
    mean = {f"top{k}": sum(q[f"top{k}"] for q in per_query.values()) / n for k in ks}
    return mean, per_query
