from __future__ import annotations

import pytest

from hybrid.errors import ConfigError
from hybrid.fusion import FusionConfig, fuse, linear, normalize, rrf
from hybrid.types import Hit


def hits(*pairs: tuple[str, float]) -> list[Hit]:
    return [Hit(id=i, score=s) for i, s in pairs]


BM25 = hits(("a", 10.0), ("b", 8.0), ("c", 2.0))
DENSE = hits(("b", 0.9), ("d", 0.7), ("a", 0.1))


def test_rrf_hand_computed() -> None:
    fused = rrf({"bm25": BM25, "dense": DENSE}, k=60)
    scores = {h.id: h.score for h in fused}
    assert scores["b"] == pytest.approx(1 / 62 + 1 / 61)
    assert scores["a"] == pytest.approx(1 / 61 + 1 / 63)
    assert scores["c"] == pytest.approx(1 / 63)
    assert scores["d"] == pytest.approx(1 / 62)
    assert [h.id for h in fused] == ["b", "a", "d", "c"]
    assert fused[0].sources == {"bm25": 8.0, "dense": 0.9}


def test_rrf_weights_and_tie_break_by_id() -> None:
    fused = rrf({"x": hits(("z", 1.0)), "y": hits(("a", 1.0))}, k=0)
    assert [h.id for h in fused] == ["a", "z"]  # equal scores: id order
    weighted = rrf({"x": hits(("z", 1.0)), "y": hits(("a", 1.0))}, k=0, weights={"x": 2.0, "y": 1.0})
    assert [h.id for h in weighted] == ["z", "a"]


def test_minmax_and_zscore() -> None:
    assert normalize([10.0, 8.0, 2.0], "minmax") == pytest.approx([1.0, 0.75, 0.0])
    assert normalize([5.0, 5.0], "minmax") == [1.0, 1.0]
    # mean 2, population std sqrt(8/3)
    z = normalize([0.0, 2.0, 4.0], "zscore")
    assert z == pytest.approx([-1.224744871, 0.0, 1.224744871])
    assert normalize([3.0, 3.0], "zscore") == [0.0, 0.0]


def test_linear_minmax_hand_computed() -> None:
    fused = linear({"bm25": BM25, "dense": DENSE}, "minmax", {"bm25": 0.5, "dense": 0.5})
    scores = {h.id: h.score for h in fused}
    # bm25 minmax: a 1, b .75, c 0 ; dense minmax: b 1, d .75, a 0 ; missing -> 0
    assert scores == pytest.approx({"a": 0.5, "b": 0.875, "c": 0.0, "d": 0.375})
    assert [h.id for h in fused] == ["b", "a", "d", "c"]


def test_linear_zscore_missing_gets_list_minimum() -> None:
    fused = linear({"s": hits(("a", 0.0), ("b", 2.0), ("c", 4.0)), "t": hits(("a", 1.0))}, "zscore")
    scores = {h.id: h.score for h in fused}
    assert scores["c"] == pytest.approx(1.224744871 + 0.0)
    assert scores["a"] == pytest.approx(-1.224744871 + 0.0)


def test_fuse_truncates_and_validates() -> None:
    assert len(fuse(BM25, DENSE, FusionConfig(), k=2)) == 2
    assert fuse(BM25, DENSE, FusionConfig(method="linear"), k=1)[0].id == "b"
    with pytest.raises(ConfigError, match="unknown fusion 'max'"):
        FusionConfig(method="max")  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["rrf", "linear"])
def test_fusing_the_top_k_equals_the_full_fusion_cut_at_k(method: str) -> None:
    """fuse builds hits for the top k only; they are the full fusion's first k, scores,
    ties and per-side sources included (ids repeat within and across sides, scores tie)."""
    import random

    rng = random.Random(7)
    for _ in range(200):
        ids = [f"d{n}" for n in range(rng.randint(1, 40))]
        bm25 = [Hit(id=rng.choice(ids), score=float(rng.randint(0, 5))) for _ in range(rng.randint(0, 30))]
        dense = [
            Hit(id=rng.choice(ids), score=rng.choice([0.5, 0.25, rng.random()])) for _ in range(rng.randint(1, 30))
        ]
        lists = {"bm25": bm25, "dense": dense}
        whole = (
            rrf(lists, 60.0, {"bm25": 0.5, "dense": 0.5})
            if method == "rrf"
            else linear(lists, "minmax", {"bm25": 0.5, "dense": 0.5})
        )
        config = FusionConfig(method=method)  # type: ignore[arg-type]
        for k in (1, 3, 10, 100):
            assert fuse(bm25, dense, config, k) == whole[:k]
