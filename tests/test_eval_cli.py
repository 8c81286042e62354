"""``hybrid eval`` end to end on both backends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hybrid.cli.app import app
from typer.testing import CliRunner

from tests.conftest import FIXTURES

runner = CliRunner()


def _index(args: list[str]) -> None:
    result = runner.invoke(app, ["index", *args, "--quiet"])
    assert result.exit_code == 0, result.output


def _eval(args: list[str], report: Path) -> dict:
    result = runner.invoke(app, ["eval", *args, "--quiet", "--json", str(report)])
    assert result.exit_code == 0, result.output
    return json.loads(report.read_text())


def test_eval_embedded_writes_run_and_report(tmp_path: Path, tiny_model: Path, beir_small: Path) -> None:
    store = ["--store", str(tmp_path / "store")]
    _index([str(beir_small), "-i", "docs", "-m", str(tiny_model), *store])
    base = ["-i", "docs", "--queries", str(beir_small / "queries.jsonl"), "--qrels", str(beir_small / "qrels/test.tsv")]
    report = _eval([*base, "--mode", "bm25", "--run", str(tmp_path / "bm25.trec"), *store], tmp_path / "bm25.json")
    assert report["metrics"]["ndcg@10"] == pytest.approx(1.0) and report["metrics"]["mrr@10"] == 1.0
    assert set(report["metrics"]) == {"ndcg@10", "mrr@10", "recall@100", "recall@1000", "map"}
    assert (report["queries"], report["index_version"], report["backend"]) == (4, "docs-v000001", "embedded")
    assert report["config"]["relevance_level"] == 1 and report["timings"]["queries_per_s"] > 0
    lines = (tmp_path / "bm25.trec").read_text().splitlines()
    assert lines[0].split()[:4] == ["q1", "Q0", "d1", "1"]

    report2 = _eval(
        [*base, "--mode", "hybrid", "--run-format", "msmarco", "--run", str(tmp_path / "h.tsv"), *store],
        tmp_path / "hybrid.json",
    )
    assert "msmarco_mrr@10" in report2["metrics"]
    assert (tmp_path / "h.tsv").read_text().splitlines()[0].split("\t")[2] == "1"

    result = runner.invoke(app, ["eval", "--compare", str(tmp_path / "bm25.json"), str(tmp_path / "hybrid.json")])
    assert result.exit_code == 0, result.output
    assert "ndcg@10" in result.stdout and "baseline" in result.stdout


def test_eval_dpr_answers(tmp_path: Path, tiny_model: Path) -> None:
    store = ["--store", str(tmp_path / "store")]
    _index([str(FIXTURES / "dpr-psgs.tsv"), "-i", "psgs", "-m", str(tiny_model), *store])
    report = _eval(
        [
            "-i",
            "psgs",
            "--queries",
            str(FIXTURES / "dpr-qa.tsv"),
            "--mode",
            "bm25",
            "-k",
            "20",
            "--run",
            str(tmp_path / "run.json"),
            *store,
        ],
        tmp_path / "r.json",
    )
    assert report["config"]["run_format"] == "dpr"
    assert report["metrics"]["top5"] == 1.0 and report["metrics"]["top20"] == 1.0
    contexts = json.loads((tmp_path / "run.json").read_text())["0"]["contexts"]
    assert contexts[0]["has_answer"] and contexts[0]["docid"] == "7"


def test_eval_warns_about_missing_documents_and_queries(tmp_path: Path, tiny_model: Path, beir_small: Path) -> None:
    store = ["--store", str(tmp_path / "store")]
    _index([str(beir_small), "-i", "docs", "-m", str(tiny_model), *store])
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\tnot-there\t1\nq9\td2\t1\n")
    result = runner.invoke(
        app,
        [
            "eval",
            "-i",
            "docs",
            "--queries",
            str(beir_small / "queries.jsonl"),
            "--qrels",
            str(qrels),
            "--mode",
            "bm25",
            "--quiet",
            *store,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Warning: 3 of 4 queries have no qrels or answers; they are not evaluated" in result.stderr
    assert "Warning: 1 queries in the qrels have no query text" in result.stderr
    assert "Warning: 1 of 3 relevant documents in the qrels are not in index 'docs'" in result.stderr


def test_a_failure_leaves_its_error_line_alone(tmp_path: Path, tiny_model: Path, beir_small: Path) -> None:
    """With its progress bar drawn (no --quiet), a run that fails shows the error line
    and no bar stopped at 0/? (nor an empty line) above it."""
    store = ["--store", str(tmp_path / "store")]
    _index([str(beir_small), "-i", "docs", "-m", str(tiny_model), *store])
    missing = tmp_path / "nope.tsv"
    args = ["eval", "-i", "docs", "--queries", str(beir_small / "queries.jsonl"), "--qrels", str(missing), *store]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert result.stderr == f"Error: {missing}: file not found; check the path\n"


def test_exclude_self(tmp_path: Path, tiny_model: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"_id": f"a{i}", "text": f"argument {i} about topic {i % 2}"}) + "\n" for i in range(6))
    )
    queries = tmp_path / "queries.jsonl"
    queries.write_text(json.dumps({"_id": "a0", "text": "argument 0 about topic 0"}) + "\n")
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\na0\ta2\t1\n")
    store = ["--store", str(tmp_path / "store")]
    _index([str(corpus), "-i", "args", "-m", str(tiny_model), *store])
    run = tmp_path / "run.trec"
    _eval(
        [
            "-i",
            "args",
            "--queries",
            str(queries),
            "--qrels",
            str(qrels),
            "--mode",
            "bm25",
            "--exclude-self",
            "-k",
            "3",
            "--run",
            str(run),
            *store,
        ],
        tmp_path / "r.json",
    )
    docs = [line.split()[2] for line in run.read_text().splitlines()]
    assert "a0" not in docs and len(docs) == 3


@pytest.mark.es
def test_bm25_metrics_identical_on_es_and_embedded(
    tmp_path: Path, tiny_model: Path, beir_small: Path, es_url: str, es_prefix: str
) -> None:
    """Embedded Lucene without stemming vs ES's standard analyzer with English stop words."""
    from hybrid.backends.elastic import ElasticBackend
    from hybrid.config import ElasticConfig

    store = ["--store", str(tmp_path / "store")]
    name = f"{es_prefix}-eval"
    es = ["--es-url", es_url]
    queries = tmp_path / "queries.tsv"  # broad queries: many documents match each
    queries.write_text(
        "q1\tsunlight water electricity from the sun\nq2\tbees honey and the moon tides\n"
        "q3\tsorted interval lookups with keys and brain memories\n"
    )
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("q1 0 d1 1\nq1 0 d11 1\nq2 0 d5 1\nq2 0 d6 1\nq3 0 d9 1\nq3 0 d12 1\n")
    q = ["--queries", str(queries), "--qrels", str(qrels), "--mode", "bm25"]
    try:
        _index([str(beir_small), "-i", name, "-m", str(tiny_model), *es])
        _index([str(beir_small), "-i", "docs", "-m", str(tiny_model), "--stemmer", "none", *store])
        on_es = _eval(["-i", name, *q, "--run", str(tmp_path / "es.trec"), *es], tmp_path / "es.json")
        embedded = _eval(["-i", "docs", *q, "--run", str(tmp_path / "emb.trec"), *store], tmp_path / "emb.json")
        assert on_es["metrics"] == embedded["metrics"]
        assert on_es["backend"] == "elasticsearch"
        es_run = [line.split() for line in (tmp_path / "es.trec").read_text().splitlines()]
        emb_run = [line.split() for line in (tmp_path / "emb.trec").read_text().splitlines()]
        assert len(es_run) == len(emb_run) >= 10  # the queries retrieve several documents each
        # Same documents with proportional scores: ES's BM25 keeps the (k1 + 1) factor that
        # Lucene 8+ dropped (k1 = 0.9 here). The two Lucene versions may differ in the last
        # float digit, which can swap near-ties, so no strict order here.
        es_scores = {(r[0], r[2]): float(r[4]) / 1.9 for r in es_run}
        emb_scores = {(r[0], r[2]): float(r[4]) for r in emb_run}
        assert es_scores.keys() == emb_scores.keys()
        for key, value in es_scores.items():
            assert value == pytest.approx(emb_scores[key], rel=1e-3)
    finally:
        ElasticBackend(ElasticConfig(url=es_url)).drop(name)


def test_eval_without_run_leaves_nothing_behind(
    tmp_path: Path, tiny_model: Path, beir_small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    store = ["--store", str(tmp_path / "store")]
    _index([str(beir_small), "-i", "docs", "-m", str(tiny_model), *store])
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    base = ["-i", "docs", "--queries", str(beir_small / "queries.jsonl"), "--qrels", str(beir_small / "qrels/test.tsv")]
    for run_format in ("trec", "msmarco"):
        result = runner.invoke(app, ["eval", *base, "--run-format", run_format, "--quiet", *store])
        assert result.exit_code == 0, result.output
        assert "ndcg@10" in result.stdout and "run:" not in result.stdout
    assert sorted(scratch.iterdir()) == []
