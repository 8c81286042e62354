"""The guard: a dev split carved from the training queries decides whether a trained model
replaces the index's; multi-positive loss, anchors and distillation on many-positive data."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hybrid.indexing import IndexJob, run_index
from hybrid.negatives import SamplerConfig
from hybrid.training.config import TrainConfig
from hybrid.training.model import contrastive_loss, distill_loss
from hybrid.training.selection import (
    GuardConfig,
    Scored,
    carve_dev,
    decide,
    ndcg_at,
    next_alpha,
)
from hybrid.training.trainer import train

WORDS = [
    "heart",
    "blood",
    "pressure",
    "sugar",
    "insulin",
    "liver",
    "kidney",
    "brain",
    "nerve",
    "muscle",
    "bone",
    "skin",
    "lung",
    "cancer",
    "tumor",
    "virus",
    "bacteria",
    "fever",
    "cough",
    "pain",
    "sleep",
    "diet",
    "fat",
    "salt",
    "coffee",
    "tea",
    "milk",
    "egg",
    "fish",
    "meat",
    "fruit",
    "apple",
    "orange",
    "bean",
    "rice",
    "wheat",
    "corn",
    "oil",
    "vitamin",
    "iron",
    "zinc",
    "calcium",
    "protein",
    "enzyme",
    "hormone",
    "gene",
    "cell",
    "tissue",
    "organ",
    "drug",
    "dose",
]
FILLER = [
    "study",
    "result",
    "patient",
    "group",
    "trial",
    "effect",
    "level",
    "risk",
    "data",
    "method",
    "analysis",
    "report",
    "change",
    "rate",
    "value",
    "sample",
    "control",
    "measure",
    "factor",
    "period",
    "number",
    "review",
    "case",
    "model",
    "test",
]


def shared_positives(root: Path, topics: int = 16, docs_per_topic: int = 12, queries_per_topic: int = 10) -> Path:
    """A BEIR directory like NFCorpus in miniature: every query of a topic has all of the
    topic's documents as positives, so positives are many and shared between queries."""
    rng = random.Random(0)
    root.mkdir(parents=True)
    (root / "qrels").mkdir()
    keywords = [WORDS[3 * t : 3 * t + 3] for t in range(topics)]
    with (root / "corpus.jsonl").open("w") as fh:
        for t in range(topics):
            for d in range(docs_per_topic):
                words = rng.sample(keywords[t], 2) + rng.sample(FILLER, 8)
                rng.shuffle(words)
                fh.write(json.dumps({"_id": f"t{t}d{d}", "title": "", "text": " ".join(words)}) + "\n")
    with (root / "queries.jsonl").open("w") as q, (root / "qrels" / "train.tsv").open("w") as r:
        r.write("query-id\tcorpus-id\tscore\n")
        for t in range(topics):
            for n in range(queries_per_topic):
                q.write(json.dumps({"_id": f"q{t}-{n}", "text": " ".join(rng.sample(keywords[t], 2))}) + "\n")
                for d in range(docs_per_topic):
                    r.write(f"q{t}-{n}\tt{t}d{d}\t1\n")
    return root


@pytest.fixture(scope="module")
def many_positives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_positives(tmp_path_factory.mktemp("many") / "beir")


def _config(index: str, data: Path, out: Path, model: Path, **kw: Any) -> TrainConfig:
    values: dict[str, Any] = {
        "index": index,
        "queries": data / "queries.jsonl",
        "qrels": data / "qrels/train.tsv",
        "out": out,
        "model": str(model),
        "sampler": SamplerConfig(n=2, depth=20),
        "steps": 6,
        "batch_size": 8,
        "lr": 1e-3,
        "save_every": 0,
        "bm25_depth": 20,
        "knn_depth": 20,
        "guard_depth": 20,
        "dev_share": 0.3,
    }
    values.update(kw)
    return TrainConfig(**values)


def test_carve_is_seeded_held_out_and_falls_back(many_positives: Path, tmp_path: Path) -> None:
    queries, qrels = many_positives / "queries.jsonl", many_positives / "qrels/train.tsv"
    guard = GuardConfig(dev_share=0.1, dev_min=50)
    split, note = carve_dev(queries, qrels, tmp_path / "a", guard, seed=3)
    again, _ = carve_dev(queries, qrels, tmp_path / "b", guard, seed=3)
    assert note is None and split is not None and again is not None
    assert split.exclude == again.exclude and len(split.exclude) == 50  # 10 % of 160 is 16: at least 50
    dev_ids = {json.loads(line)["_id"] for line in split.queries.read_text().splitlines()}
    assert split.train_queries is not None
    train_ids = {json.loads(line)["_id"] for line in split.train_queries.read_text().splitlines()}
    assert dev_ids == split.exclude and not dev_ids & train_ids and len(train_ids) == 110
    assert {line.split("\t")[0] for line in split.qrels.read_text().splitlines()[1:]} == dev_ids
    few, why = carve_dev(queries, qrels, tmp_path / "c", GuardConfig(dev_min=90), seed=3)
    assert few is None and why is not None and "too few" in why and "falls back" in why


def test_ndcg_matches_trec_eval_definition() -> None:
    judged = {"a": 2, "b": 1, "c": 1}
    assert ndcg_at(["a", "b", "c"], judged) == pytest.approx(1.0)
    assert ndcg_at(["x", "a"], judged) == pytest.approx((2 / np.log2(3)) / (2 + 1 / np.log2(3) + 0.5))
    assert ndcg_at(["x"], {"y": 0}) == 0.0


def test_decide_needs_a_win_beyond_noise() -> None:
    rng = np.random.default_rng(0)
    base_q = rng.uniform(0, 1, 200)
    base = Scored("base", None, float(base_q.mean()), base_q.tolist())
    better_q = np.clip(base_q + 0.1, 0, 1)
    noisy_q = base_q + rng.normal(0, 0.2, 200) * (rng.uniform(size=200) < 0.05)
    better = Scored("alpha-0.50", "/m/a", float(better_q.mean()), better_q.tolist(), alpha=0.5)
    noisy = Scored("step-1", "/m/s", float(noisy_q.mean()), noisy_q.tolist(), alpha=1.0)
    won = decide(base, [noisy, better], p_max=0.05)
    assert won.replace and won.chosen == "/m/a" and won.p_value < 0.05 and won.best == "alpha-0.50"
    worse_q = base_q - 0.05
    lost = decide(base, [Scored("s", "/m/s", float(worse_q.mean()), worse_q.tolist(), alpha=1.0)], p_max=0.05)
    assert not lost.replace and lost.chosen is None and "left as it was" in lost.line()
    tie = decide(base, [noisy], p_max=0.05)
    assert not tie.replace and tie.p_value >= 0.05


def test_next_alpha_refines_toward_the_better_side() -> None:
    assert next_alpha({0.0: 0.30, 0.5: 0.35, 1.0: 0.31}) == 0.75  # best 0.5, the trained side the better
    assert next_alpha({0.0: 0.32, 0.5: 0.35, 1.0: 0.31}) == 0.25
    assert next_alpha({0.0: 0.30, 0.5: 0.31, 1.0: 0.35}) == 0.75
    assert next_alpha({0.0: 0.36, 0.5: 0.31, 1.0: 0.30}) == 0.25  # the base best: try closer to it
    assert next_alpha({0.0: 0.3, 0.25: 0.31, 0.5: 0.2, 1.0: 0.1}) == 0.125


def test_multi_positive_loss_counts_every_labelled_positive() -> None:
    torch.manual_seed(0)
    q, p = torch.randn(2, 8), torch.randn(6, 8)
    positives, groups = torch.tensor([0, 3]), torch.tensor([0, 0, 0, 1, 1, 1])
    single = contrastive_loss(q, p, positives, groups, 0.1, True)
    assert torch.allclose(single, contrastive_loss(q, p, positives, groups, 0.1, True, None, None))
    targets = torch.zeros(2, 6, dtype=torch.bool)
    targets[0, [0, 1]] = True  # query 0: columns 0 and 1 are labelled positives
    targets[1, 3] = True
    multi = contrastive_loss(q, p, positives, groups, 0.1, True, targets.clone(), targets)
    scores = q @ p.T / 0.1
    row0 = torch.logsumexp(scores[0], 0) - torch.logsumexp(scores[0, [0, 1]], 0)
    row1 = torch.logsumexp(scores[1], 0) - scores[1, 3]
    assert torch.allclose(multi, (row0 + row1) / 2, atol=1e-5)
    # a second positive only lowers the loss: it joins the numerator instead of being dropped
    dropped = contrastive_loss(q, p, positives, groups, 0.1, True, targets.clone())
    assert multi.item() < dropped.item() + 1e-6


def test_graded_gains_weigh_each_positive_in_the_numerator() -> None:
    torch.manual_seed(0)
    q, p = torch.randn(2, 8), torch.randn(6, 8)
    positives, groups = torch.tensor([0, 3]), torch.tensor([0, 0, 0, 1, 1, 1])
    targets = torch.zeros(2, 6, dtype=torch.bool)
    targets[0, [0, 1]] = True
    targets[1, 3] = True
    gains = torch.ones(2, 6)
    gains[0, 1] = 0.5  # query 0's second positive has half the best grade
    weighted = contrastive_loss(q, p, positives, groups, 0.1, True, targets.clone(), targets, gains)
    scores = q @ p.T / 0.1
    row0 = torch.logsumexp(scores[0], 0) - torch.log(torch.exp(scores[0, 0]) + 0.5 * torch.exp(scores[0, 1]))
    row1 = torch.logsumexp(scores[1], 0) - scores[1, 3]
    assert torch.allclose(weighted, (row0 + row1) / 2, atol=1e-5)
    plain = contrastive_loss(q, p, positives, groups, 0.1, True, targets.clone(), targets)
    same = contrastive_loss(q, p, positives, groups, 0.1, True, targets.clone(), targets, torch.ones(2, 6))
    assert torch.allclose(plain, same) and weighted.item() > plain.item()  # a lesser grade counts for less
    gains[0, 1] = 0.0  # grade 0: no target, and dropped from the softmax as the mask drops it
    zero = contrastive_loss(q, p, positives, groups, 0.1, True, targets.clone(), targets, gains)
    keep = [0, 2, 3, 4, 5]
    row0 = torch.logsumexp(scores[0, keep], 0) - scores[0, 0]
    assert torch.allclose(zero, (row0 + row1) / 2, atol=1e-5)


def test_batch_inputs_place_each_queries_gains_in_its_own_row() -> None:
    from hybrid.training.data import Example
    from hybrid.training.step import batch_inputs
    from hybrid.types import Document

    class Texts:
        def get(self, index: str, ids: list[str]) -> dict[str, Document]:
            return {d: Document(id=d, text=f"text {d}") for d in ids}

    first = Example("a", "qa", "p1", ("n1",), frozenset({"p1", "p2"}), ("p2",), frozenset({"p1", "p2"}))
    first = dataclasses.replace(first, gains=(("p2", 0.5),))
    second = Example("b", "qb", "p2", ("n2",), frozenset({"p2"}), (), frozenset({"p2"}))  # p2 is b's best
    config = _config("idx", Path("."), Path("out"), Path("m"), positives="all", grades="weight")
    inputs = batch_inputs([first, second], Texts(), config, torch.device("cpu"))  # type: ignore[arg-type]
    assert inputs.ids == ["p1", "p2", "n1", "p2", "n2"]
    assert inputs.gains.tolist() == [[1.0, 0.5, 1.0, 0.5, 1.0], [1.0] * 5]


def _graded_pools(path: Path, grades: list[int] | None) -> None:
    """Three pools whose positives carry these grades (None: written as before grades were kept)."""
    import gzip

    with gzip.open(path, "wt") as fh:
        for n in range(3):
            scores = [0.9, 0.5, 0.1]
            positives = [[f"p{k + 1}", s] + ([grades[k]] if grades else []) for k, s in enumerate(scores)]
            candidates = [[f"c{k}", 0.8 - 0.05 * k, "both", False] for k in range(10)]
            row = {"qid": f"q{n}", "query": f"query {n}", "version": "v", "positives": positives}
            fh.write(json.dumps({**row, "candidates": candidates}) + "\n")


def test_graded_positives_are_drawn_in_proportion_to_their_grade(tmp_path: Path) -> None:
    from hybrid.mining import read_pools
    from hybrid.training.data import PoolData

    sampler = SamplerConfig(n=2, depth=10, scale=20.0)
    graded, old = tmp_path / "graded.jsonl.gz", tmp_path / "old.jsonl.gz"
    _graded_pools(graded, [2, 1, 1])
    _graded_pools(old, None)
    assert next(read_pools(graded)).grades == {"p1": 2, "p2": 1, "p3": 1}
    assert next(read_pools(old)).grades == {}  # pools mined before grades were kept: every grade 1

    def targets(data: PoolData) -> list[str]:
        return [data.draw(step, 0, 1)[1].positive for step in range(600)]

    weighted = targets(PoolData(graded, sampler, 1, grades=True))
    assert 0.45 < weighted.count("p1") / 600 < 0.55  # grade 2 of 2 + 1 + 1
    uniform = targets(PoolData(graded, sampler, 1))
    assert 0.28 < uniform.count("p1") / 600 < 0.39  # ignored: one in three
    assert targets(PoolData(old, sampler, 1, grades=True)) == uniform  # equal grades: drawn exactly as before
    example = PoolData(graded, sampler, 1, grades=True, positives_per_query=3).batch(0, 1)[0]
    assert dict(example.gains) == {"p2": 0.5, "p3": 0.5}
    assert PoolData(graded, sampler, 1, positives_per_query=3).batch(0, 1)[0].gains == ()


def test_distill_is_zero_at_the_teacher_and_positive_elsewhere() -> None:
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(2, 8), dim=1)
    p = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    groups = torch.tensor([0, 0, 1, 1])
    teacher = torch.stack([q[g] @ p[i] for i, g in enumerate(groups.tolist())])
    assert distill_loss(q, p, groups, teacher, 0.05).item() == pytest.approx(0.0, abs=1e-6)
    assert distill_loss(q, p, groups, teacher.flip(0), 0.05).item() > 0.01


def _indexed(backend: Any, data: Path, model: Path) -> Any:
    from hybrid.encoder import Encoder, EncoderConfig

    encoder = Encoder(EncoderConfig(model=str(model), batch_size=32))
    run_index(IndexJob(corpus=data, index="idx"), backend, encoder)
    return backend.info("idx")


def test_a_run_that_makes_things_worse_leaves_the_index_untouched(
    embedded_backend: Any, many_positives: Path, tmp_path: Path
) -> None:
    from hybrid.encoder import default_model_dir

    model = default_model_dir()  # all-MiniLM-L6-v2 ranks this data well: training can only lose
    before = _indexed(embedded_backend, many_positives, model)
    # Training labels that point every query at the next topic's documents (labels gone
    # wrong): the trained model ranks worse on the user's true dev labels.
    true = (many_positives / "qrels/train.tsv").read_text().splitlines()
    wrong = tmp_path / "wrong.tsv"
    rows = [line.split("\t") for line in true[1:]]
    shifted = {f"t{t}": f"t{(t + 1) % 16}" for t in range(16)}
    wrong.write_text(
        true[0] + "\n" + "".join(f"{q}\t{shifted[d.split('d')[0]]}d{d.split('d')[1]}\t{g}\n" for q, d, g in rows)
    )
    config = _config(
        "idx",
        many_positives,
        tmp_path / "run",
        model,
        qrels=wrong,
        steps=12,
        lr=2e-4,
        dev_queries=many_positives / "queries.jsonl",
        dev_qrels=many_positives / "qrels/train.tsv",
    )
    result = train(config, embedded_backend)
    after = embedded_backend.info("idx")
    assert result.guard is not None and not result.guard.replace, result.guard
    assert result.guard.best_ndcg <= result.guard.base or result.guard.p_value >= 0.05
    assert (after.version, after.model) == (before.version, before.model)
    assert result.refreshes == []  # no re-embed was spent
    saved = json.loads((tmp_path / "run" / "guard.json").read_text())
    assert saved["replace"] is False and saved["queries"] == 160
    names = [s["name"] for s in saved["scored"]]
    assert names[0] == "base" and "alpha-0.50" in names and "checkpoint-0000012" in names
    trained = next(s for s in saved["scored"] if s["name"] == "checkpoint-0000012")
    assert trained["ndcg"] < saved["base"]  # the run did make things worse


def test_carved_dev_queries_are_neither_mined_nor_trained_on(
    embedded_backend: Any, many_positives: Path, tiny_model: Path, tmp_path: Path
) -> None:
    from hybrid.mining import read_pools

    _indexed(embedded_backend, many_positives, tiny_model)
    result = train(_config("idx", many_positives, tmp_path / "run", tiny_model, steps=2), embedded_backend)
    assert result.guard is not None and result.guard.queries == 50  # 30 % of 160 is 48: at least 50
    held = {json.loads(line)["_id"] for line in (tmp_path / "run" / "dev" / "queries.jsonl").read_text().splitlines()}
    mined = {pool.qid for pool in read_pools(tmp_path / "run" / "pools" / "pools-0000000.jsonl.gz")}
    assert len(held) == 50 and len(mined) == 110 and not mined & held
    assert result.plan["dev_queries"] == 50 and result.plan["queries"] == 110


def test_dev_judgements_of_documents_not_in_the_index_are_counted_and_skipped(
    embedded_backend: Any, many_positives: Path, tiny_model: Path, tmp_path: Path
) -> None:
    from hybrid.errors import ConfigError

    _indexed(embedded_backend, many_positives, tiny_model)
    lines = (many_positives / "qrels/train.tsv").read_text().splitlines()
    dev = tmp_path / "dev.tsv"  # topic 0's queries, each also naming a document from another corpus,
    # and one query judged on such documents alone
    rows = [line for line in lines[1:] if line.startswith("q0-")]
    extra = [f"q0-{n}\tgone{n}\t1" for n in range(10)] + ["q1-0\tgone-a\t1", "q1-0\tgone-b\t2"]
    dev.write_text("\n".join([lines[0], *rows, *extra]) + "\n")
    queries = many_positives / "queries.jsonl"
    config = _config("idx", many_positives, tmp_path / "run", tiny_model, steps=2, dev_queries=queries, dev_qrels=dev)
    only_gone = tmp_path / "gone.tsv"
    only_gone.write_text("\n".join([lines[0], *extra]) + "\n")
    with pytest.raises(ConfigError, match="none of the dev qrels' documents is in index 'idx'"):
        train(dataclasses.replace(config, dev_qrels=only_gone, out=tmp_path / "run0"), embedded_backend)
    other_ids = tmp_path / "other.tsv"
    other_ids.write_text(lines[0] + "\nnobody\tt0d0\t1\n")
    with pytest.raises(ConfigError, match="no dev query has qrels: check that the dev queries' ids match"):
        train(dataclasses.replace(config, dev_qrels=other_ids, out=tmp_path / "run1"), embedded_backend)
    result = train(config, embedded_backend)
    assert result.guard is not None and result.guard.queries == 10  # q1-0 had nothing left
    note = "the dev qrels name 12 documents not in index 'idx': skipped; 1 dev query judged on those alone was dropped"
    assert note in result.notes
    saved = json.loads((tmp_path / "run" / "dev" / "pool.json").read_text())
    assert "q1-0" not in saved["qrels"] and not any("gone" in d for q in saved["qrels"].values() for d in q)


def test_a_run_that_wins_replaces_the_index_with_the_chosen_model(
    embedded_backend: Any, many_positives: Path, tiny_model: Path, tmp_path: Path
) -> None:
    before = _indexed(embedded_backend, many_positives, tiny_model)
    config = _config(
        "idx", many_positives, tmp_path / "run", tiny_model, steps=30, lr=2e-3, positives="all", positives_per_query=2
    )
    result = train(config, embedded_backend)
    decision = result.guard
    assert decision is not None
    after = embedded_backend.info("idx")
    assert decision.best_ndcg > decision.base and decision.replace, decision.line()
    assert after.version != before.version and len(result.refreshes) == 1
    assert decision.chosen is not None and after.model.endswith(Path(decision.chosen).name)


def test_graded_qrels_change_the_training_only_when_weighted(
    embedded_backend: Any, many_positives: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """The fixture's qrels with a third of each topic's documents at grade 2: weighting by
    grade trains on other targets and weights than ignoring grades, and still trains."""
    _indexed(embedded_backend, many_positives, tiny_model)
    graded = tmp_path / "graded.tsv"
    lines = (many_positives / "qrels/train.tsv").read_text().splitlines()
    rows = [line.split("\t") for line in lines[1:]]
    grade = {d: 2 if int(d.split("d")[1]) < 4 else 1 for _, d, _ in rows}
    graded.write_text(lines[0] + "\n" + "".join(f"{q}\t{d}\t{grade[d]}\n" for q, d, _ in rows))

    def losses(grades: str) -> list[float]:
        kw = {"qrels": graded, "positives": "all", "positives_per_query": 2, "grades": grades, "guard": False}
        config = _config("idx", many_positives, tmp_path / grades, tiny_model, steps=3, refresh_at_end=False, **kw)
        return train(config, embedded_backend).losses

    weighted, ignored = losses("weight"), losses("ignore")
    assert len(weighted) == len(ignored) == 3 and all(np.isfinite(weighted))
    assert weighted != ignored
    binary = dataclasses.replace(
        _config("idx", many_positives, tmp_path / "binary", tiny_model, steps=3, refresh_at_end=False, guard=False),
        positives="all",
        positives_per_query=2,
    )
    assert train(binary, embedded_backend).losses == ignored  # ignored grades train as binary qrels do


def test_too_few_queries_warn_and_fall_back_to_the_loss(
    embedded_backend: Any, beir_small: Path, tiny_model: Path, tmp_path: Path
) -> None:
    from hybrid.encoder import Encoder, EncoderConfig

    run_index(IndexJob(corpus=beir_small, index="idx"), embedded_backend, Encoder(EncoderConfig(model=str(tiny_model))))
    config = TrainConfig(
        index="idx",
        queries=beir_small / "queries.jsonl",
        qrels=beir_small / "qrels/test.tsv",
        out=tmp_path / "run",
        model=str(tiny_model),
        sampler=SamplerConfig(n=2, depth=10),
        steps=2,
        batch_size=2,
        save_every=0,
        bm25_depth=5,
        knn_depth=5,
    )
    result = train(config, embedded_backend)
    assert result.guard is None and any("falls back to the training loss" in n for n in result.notes)
    assert len(result.refreshes) == 1  # unguarded: the final model is refreshed in, as before


def test_anchor_and_several_positives_in_examples(many_positives: Path, tmp_path: Path) -> None:
    from hybrid.mining import Pool
    from hybrid.training.data import PoolData

    pools = tmp_path / "pools.jsonl.gz"
    import gzip

    with gzip.open(pools, "wt") as fh:
        for n in range(3):
            pool = Pool(
                qid=f"q{n}",
                query=f"query {n}",
                positives=[("p1", 0.9), ("p2", 0.5), ("p3", 0.1)],
                candidates=[(f"c{k}", 0.8 - 0.05 * k, "both", False) for k in range(10)],
            )
            fh.write(json.dumps({**pool.__dict__, "version": "v"}) + "\n")
    data = PoolData(
        pools, SamplerConfig(n=2, depth=10, anchor="max", scale=20.0), 1, frozenset({"q2"}), positives_per_query=3
    )
    assert len(data) == 2  # q2 held out
    example = data.batch(0, 2)[0]
    assert len(example.extra_positives) == 2 and {example.positive, *example.extra_positives} == {"p1", "p2", "p3"}
    assert example.labelled == {"p1", "p2", "p3"} and len(example.teacher) == 5
