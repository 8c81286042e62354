"""Mining pools on both backends: union of BM25 and kNN, exact scores, resume, flags."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hybrid.errors import ConfigError
from hybrid.indexing import IndexJob, run_index
from hybrid.mining import MineJob, read_pools, run_mine
from tests.conftest import FIXTURES


class Stop(Exception):
    pass


def test_pools_union_exact_scores_and_resume(
    backend_and_name: tuple[Any, str], tiny_encoder: Any, beir_small: Path, tmp_path: Path
) -> None:
    backend, name = backend_and_name
    run_index(IndexJob(corpus=beir_small, index=name), backend, tiny_encoder)
    out = tmp_path / "pools.jsonl.gz"
    job = MineJob(
        index=name,
        queries=beir_small / "queries.jsonl",
        qrels=beir_small / "qrels/test.tsv",
        out=out,
        bm25_depth=3,
        knn_depth=3,
        batch_size=1,
    )

    def stop_after_two(done: int, total: int) -> None:
        if done == 2:
            raise Stop

    with pytest.raises(Stop):
        run_mine(job, backend, tiny_encoder, stop_after_two)
    stats = run_mine(job, backend, tiny_encoder)
    assert (stats.queries, stats.resumed, stats.mined) == (4, 2, 2)

    pools = {p.qid: p for p in read_pools(out)}
    assert sorted(pools) == ["q1", "q2", "q3", "q4"]
    docs = backend.get(name, [f"d{i}" for i in range(1, 13)])
    doc_ids = sorted(docs)
    doc_vecs = dict(zip(doc_ids, tiny_encoder.encode_passages([docs[d] for d in doc_ids]), strict=True))
    for pool in pools.values():
        q = tiny_encoder.encode_queries([pool.query])[0]
        bm25 = {h.id for h in backend.bm25(name, [pool.query], 3)[0]}
        knn = {h.id for h in backend.knn(name, q[None, :], 3)[0]}
        positive = {d for d, _ in pool.positives}
        assert {c[0] for c in pool.candidates} == (bm25 | knn) - positive
        for doc_id, score, source, flagged in pool.candidates:
            assert score == pytest.approx(float(doc_vecs[doc_id] @ q), abs=1e-4)
            assert source == ("both" if doc_id in bm25 and doc_id in knn else "bm25" if doc_id in bm25 else "knn")
            assert flagged is False
        assert [c[1] for c in pool.candidates] == sorted((c[1] for c in pool.candidates), reverse=True)
        ((pos_id, pos_score),) = pool.positives
        assert pos_score == pytest.approx(float(doc_vecs[pos_id] @ q), abs=1e-4)
    assert not (tmp_path / "pools.jsonl.gz.parts").exists()
    with pytest.raises(ConfigError, match="exists; pass --recreate"):
        run_mine(job, backend, tiny_encoder)


def test_mining_streams_its_labels_and_restarts_when_the_query_file_changed(
    embedded_backend: Any, tiny_encoder: Any, beir_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hybrid.corpus
    import hybrid.corpus.topics

    def whole(path: Path) -> None:
        raise AssertionError(f"mining read {path} whole")

    import hybrid.mining

    for module in (hybrid.corpus, hybrid.corpus.topics, hybrid.mining):  # mining streams: memory bounded by the batch
        for reader in ("read_queries", "read_qrels", "read_answers"):
            monkeypatch.setattr(module, reader, whole, raising=False)
    run_index(IndexJob(corpus=beir_small, index="s"), embedded_backend, tiny_encoder)
    queries, qrels = tmp_path / "queries.tsv", tmp_path / "qrels.tsv"
    lines = ["q1\tsolar panels", "qx\tno label", "q2\tocean tides", "q3\thoney bees"]
    queries.write_text("\n".join(lines) + "\n")
    # q2's d7 is below --min-relevance; qz is not in the query file; q3 has two positives;
    # q1's d2 is listed twice and its last grade (0) counts, as when qrels are read whole.
    qrels.write_text("q1 0 d1 1\nq1 0 d2 1\nq2 0 d7 0\nq2 0 d6 1\nqz 0 d2 1\nq3 0 d5 2\nq3 0 d4 1\nq1 0 d2 0\n")
    out = tmp_path / "pools.jsonl.gz"
    job = MineJob(index="s", queries=queries, qrels=qrels, out=out, bm25_depth=3, knn_depth=3, batch_size=1)

    def stop_after_one(done: int, total: int) -> None:
        assert total == 3
        if done == 1:
            raise Stop

    with pytest.raises(Stop):
        run_mine(job, embedded_backend, tiny_encoder, stop_after_one)
    (part,) = (tmp_path / "pools.jsonl.gz.parts").glob("part-*.jsonl.gz")
    finished = gzip.decompress(part.read_bytes())
    part.write_bytes(gzip.compress(finished.replace(b'"q1"', b'"q3"')))  # parts that do not follow the file
    with pytest.raises(ConfigError, match="does not match the query file; pass --recreate"):
        run_mine(job, embedded_backend, tiny_encoder)
    queries.write_text("\n".join([*lines, "q4\tkey lookup"]) + "\n")  # changed: the finished part is stale
    stats = run_mine(job, embedded_backend, tiny_encoder)
    assert (stats.queries, stats.resumed, stats.mined) == (3, 0, 3)
    pools = list(read_pools(out))
    assert [p.qid for p in pools] == ["q1", "q2", "q3"]  # file order, labelled only
    assert [sorted(d for d, _ in p.positives) for p in pools] == [["d1"], ["d6"], ["d4", "d5"]]
    assert [p.grades for p in pools] == [{"d1": 1}, {"d6": 1}, {"d5": 2, "d4": 1}]  # the qrels' grades travel


def test_answer_strings_flag_likely_false_negatives(embedded_backend: Any, tiny_encoder: Any, tmp_path: Path) -> None:
    run_index(IndexJob(corpus=FIXTURES / "dpr-psgs.tsv", index="psgs"), embedded_backend, tiny_encoder)
    out = tmp_path / "nq.jsonl.gz"
    job = MineJob(
        index="psgs",
        queries=FIXTURES / "dpr-qa.tsv",
        answers=FIXTURES / "dpr-qa.tsv",
        out=out,
        bm25_depth=5,
        knn_depth=5,
    )
    stats = run_mine(job, embedded_backend, tiny_encoder)
    pools = {p.qid: p for p in read_pools(out)}
    flagged = {c[0] for c in pools["0"].candidates if c[3]}
    assert flagged == {"7"}  # "Iron oxide dust makes the surface of Mars look red."
    assert stats.false_negatives >= 1 and pools["0"].positives == []


def test_mine_job_validation(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs --qrels"):
        MineJob(index="x", queries=tmp_path / "q", out=tmp_path / "p.jsonl.gz")
    with pytest.raises(ConfigError, match=r"must end in \.jsonl\.gz"):
        MineJob(index="x", queries=tmp_path / "q", qrels=tmp_path / "r", out=tmp_path / "p.json")
    with pytest.raises(ConfigError, match="--batch-size of at least 1"):
        MineJob(index="x", queries=tmp_path / "q", qrels=tmp_path / "r", out=tmp_path / "p.jsonl.gz", batch_size=0)


def test_unmatched_labels_are_an_error_that_leaves_no_parts(
    embedded_backend: Any, tiny_encoder: Any, beir_small: Path, tmp_path: Path
) -> None:
    run_index(IndexJob(corpus=beir_small, index="s"), embedded_backend, tiny_encoder)
    (tmp_path / "qrels.tsv").write_text("nobody 0 d1 1\n")
    out = tmp_path / "pools.jsonl.gz"
    job = MineJob(index="s", queries=beir_small / "queries.jsonl", qrels=tmp_path / "qrels.tsv", out=out)
    with pytest.raises(ConfigError, match="no query has qrels or answers"):
        run_mine(job, embedded_backend, tiny_encoder)
    assert not (tmp_path / "pools.jsonl.gz.parts").exists()


def test_samples_from_mined_pool_follow_scores(
    embedded_backend: Any, tiny_encoder: Any, beir_small: Path, tmp_path: Path
) -> None:
    from hybrid.negatives import SamplerConfig, sample_negatives, simans_probabilities

    run_index(IndexJob(corpus=beir_small, index="idx"), embedded_backend, tiny_encoder)
    out = tmp_path / "p.jsonl.gz"
    run_mine(
        MineJob(
            index="idx",
            queries=beir_small / "queries.jsonl",
            qrels=beir_small / "qrels/test.tsv",
            out=out,
            bm25_depth=12,
            knn_depth=12,
        ),
        embedded_backend,
        tiny_encoder,
    )
    pool = next(read_pools(out))
    scores = np.array([c[1] for c in pool.candidates])
    positive = pool.positives[0][1]
    config = SamplerConfig(n=4).resolved(normalized=True, temperature=0.05)
    drawn = sample_negatives(scores, positive, config, np.random.default_rng(0))
    assert len(drawn) == 4 and len(set(drawn)) == 4
    # single draws from the mined scores follow the kernel: the more often, the nearer s+
    one = SamplerConfig(n=1, a=config.a, scale=config.scale)
    rng = np.random.default_rng(1)
    counts = np.bincount([sample_negatives(scores, positive, one, rng)[0] for _ in range(4000)], minlength=scores.size)
    expected = simans_probabilities(scores, positive, one)
    assert np.abs(counts / 4000 - expected).max() < 0.03
    gaps = np.abs(scores - positive)
    assert gaps[np.argmax(counts)] == pytest.approx(gaps.min(), abs=0.02)
