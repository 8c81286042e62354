"""Metrics on hand-built runs, checked by hand and read back by pyserini's own evaluators."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from hybrid.evaluation.compare import compare, paired_randomization_test
from hybrid.evaluation.metrics import auto_relevance_level, dpr_accuracy, msmarco_mrr10, trec_metrics
from hybrid.evaluation.runs import canonical, write_dpr, write_msmarco, write_trec
from hybrid.evaluation.trec_eval import write_trec_qrels

QRELS = {"q1": {"a": 1, "c": 1}, "q2": {"x": 2, "y": 1, "z": 0}, "q3": {"m": 1}}
RUN = {
    "q1": [("b", 3.0), ("a", 2.0), ("c", 1.0)],  # relevant at ranks 2, 3
    "q2": [("y", 5.0), ("x", 4.0), ("w", 3.0)],  # grade 1 at 1, grade 2 at 2
    # q3 retrieves nothing relevant
    "q3": [("n", 1.0)],
}


def dcg(gains: list[float]) -> float:
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


def test_trec_metrics_hand_computed() -> None:
    mean, per_query = trec_metrics(QRELS, RUN, relevance_level=1)
    ndcg_q1 = dcg([0, 1, 1]) / dcg([1, 1])
    ndcg_q2 = dcg([1, 2, 0]) / dcg([2, 1])
    assert per_query["q1"]["ndcg@10"] == pytest.approx(ndcg_q1, abs=1e-4)
    assert per_query["q2"]["ndcg@10"] == pytest.approx(ndcg_q2, abs=1e-4)
    assert mean["ndcg@10"] == pytest.approx((ndcg_q1 + ndcg_q2) / 3, abs=1e-4)
    assert mean["mrr@10"] == pytest.approx((1 / 2 + 1 + 0) / 3, abs=1e-4)
    assert mean["recall@100"] == pytest.approx((1 + 1 + 0) / 3, abs=1e-4)
    assert mean["map"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + 1 + 0) / 3, abs=1e-4)


def test_graded_threshold_changes_binary_metrics_only() -> None:
    assert auto_relevance_level({"q": {"a": 3, "b": 0}}) == 2
    assert auto_relevance_level(QRELS) == 1
    at1, _ = trec_metrics(QRELS, RUN, relevance_level=1)
    at2, _ = trec_metrics(QRELS, RUN, relevance_level=2)
    assert at2["ndcg@10"] == at1["ndcg@10"]
    # only q2 has a grade-2 doc; trec_eval -c still averages over all 3 judged queries
    assert at2["mrr@10"] == pytest.approx((0 + 1 / 2 + 0) / 3, abs=1e-4)
    assert msmarco_mrr10(QRELS, RUN, relevance_level=2)[0] == pytest.approx(at2["mrr@10"], abs=1e-4)


def test_ties_follow_trec_eval_order() -> None:
    assert canonical([("a", 1.0), ("b", 1.0), ("c", 2.0)]) == [("c", 2.0), ("b", 1.0), ("a", 1.0)]
    qrels = {"q": {"a": 1}}
    run = {"q": [("a", 1.0), ("b", 1.0)]}
    ours, _ = msmarco_mrr10(qrels, run)
    theirs, _ = trec_metrics(qrels, run, ["mrr@10"])
    assert ours == theirs["mrr@10"] == 0.5


def test_msmarco_mrr_equals_trec_eval_recip_rank() -> None:
    rng = np.random.default_rng(3)
    qrels = {f"q{i}": {f"d{j}": 1 for j in rng.choice(40, size=2, replace=False)} for i in range(30)}
    run = {q: [(f"d{j}", float(rng.integers(0, 5))) for j in range(40)] for q in qrels}  # many ties
    ours, _ = msmarco_mrr10(qrels, run)
    theirs, _ = trec_metrics(qrels, run, ["mrr@10"])
    assert ours == pytest.approx(theirs["mrr@10"], abs=1e-4)


def _pyserini_trec_eval(args: list[str]) -> dict[str, float]:
    """pyserini's own trec_eval entry point, with a Java 21+ first on PATH."""
    from hybrid.java import find_java_home

    home, _ = find_java_home(os.environ.get("JAVA_HOME"))
    env = {**os.environ, "PATH": f"{home / 'bin'}:{os.environ['PATH']}", "JAVA_HOME": str(home)}
    out = subprocess.run(
        [sys.executable, "-m", "pyserini.eval.trec_eval", *args], env=env, capture_output=True, text=True, check=True
    ).stdout
    return {p[0]: float(p[2]) for p in (line.split() for line in out.splitlines()) if len(p) == 3 and p[1] == "all"}


def test_runs_read_back_by_pyserini(tmp_path: Path) -> None:
    qrels_file = write_trec_qrels(QRELS, tmp_path / "qrels.txt")
    trec = write_trec(RUN, tmp_path / "run.trec")
    msmarco = write_msmarco(RUN, tmp_path / "run.msmarco.tsv")
    ours, _ = trec_metrics(QRELS, RUN)
    theirs = _pyserini_trec_eval(["-c", "-m", "ndcg_cut.10", "-m", "map", str(qrels_file), str(trec)])
    assert theirs["ndcg_cut_10"] == pytest.approx(ours["ndcg@10"], abs=1e-4)
    assert theirs["map"] == pytest.approx(ours["map"], abs=1e-4)
    from_msmarco = _pyserini_trec_eval(["-c", "-M", "10", "-m", "recip_rank", str(qrels_file), str(msmarco)])
    assert from_msmarco["recip_rank"] == pytest.approx(msmarco_mrr10(QRELS, RUN)[0], abs=1e-4)


def test_dpr_json_matches_pyserini_evaluator(tmp_path: Path) -> None:
    from pyserini.eval.evaluate_dpr_retrieval import evaluate_retrieval

    texts = {
        "p1": ("Mars", "The red colour comes from iron oxide dust."),
        "p2": ("Bees", "Honey is made by bees from nectar."),
        "p3": ("Other", "Nothing relevant here."),
    }
    run = {"0": [("p3", 3.0), ("p1", 2.0)], "1": [("p2", 1.0)], "2": [("p3", 1.0)]}
    answers = {"0": ["iron oxide"], "1": ["Bees"], "2": ["unicorn"]}
    path = tmp_path / "run.dpr.json"
    flags = write_dpr(run, path, {"0": "mars?", "1": "honey?", "2": "x"}, answers, texts)
    assert flags == {"0": [False, True], "1": [True], "2": [False]}
    mean, per_query = dpr_accuracy(flags, (1, 2))
    assert mean == pytest.approx({"top1": 1 / 3, "top2": 2 / 3})
    assert per_query["0"] == {"top1": 0.0, "top2": 1.0}
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        evaluate_retrieval(str(path), [1, 2])
    printed = dict(line.split("\taccuracy: ") for line in buffer.getvalue().strip().splitlines())
    assert float(printed["Top1"]) == pytest.approx(mean["top1"], abs=1e-4)
    assert float(printed["Top2"]) == pytest.approx(mean["top2"], abs=1e-4)
    stored = json.loads(path.read_text())
    assert stored["0"]["contexts"][1] == {
        "docid": "p1",
        "score": 2.0,
        "has_answer": True,
        "text": "Mars\nThe red colour comes from iron oxide dust.",
    }


def test_randomization_test_and_compare(tmp_path: Path) -> None:
    a = np.linspace(0.1, 0.5, 40)
    assert paired_randomization_test(a, a.copy()) == 1.0
    assert paired_randomization_test(a, a + 0.2) < 0.001
    noisy = a + np.where(np.arange(40) % 2 == 0, 0.05, -0.05)
    assert paired_randomization_test(a, noisy) > 0.5

    def report(path: Path, values: np.ndarray) -> Path:
        per_query = {f"q{i}": {"ndcg@10": float(v)} for i, v in enumerate(values)}
        path.write_text(json.dumps({"metrics": {"ndcg@10": float(values.mean())}, "per_query": per_query}))
        return path

    rows = compare([report(tmp_path / "a.json", a), report(tmp_path / "b.json", a + 0.2)])
    assert rows[0].p_value is None
    assert rows[1].delta == pytest.approx(0.2) and rows[1].p_value is not None and rows[1].p_value < 0.001
    assert rows[1].queries == 40
