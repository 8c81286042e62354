"""Samplers, tested statistically: draws follow p_i, masked candidates never come back."""

from __future__ import annotations

import numpy as np
import pytest

from hybrid.errors import ConfigError
from hybrid.negatives import SamplerConfig, effective_candidates, sample_negatives, simans_probabilities

SCORES = np.array([0.9, 0.8, 0.75, 0.7, 0.6, 0.5, 0.3, 0.1])


def test_simans_single_draws_follow_the_kernel_chi_square() -> None:
    from scipy.stats import chisquare

    config = SamplerConfig(scale=1.0, n=1, a=8.0, b=0.0)
    positive = 0.72
    p = simans_probabilities(SCORES, positive, config)
    rng = np.random.default_rng(0)
    draws = 20_000
    counts = np.bincount(
        [sample_negatives(SCORES, positive, config, rng)[0] for _ in range(draws)], minlength=SCORES.size
    )
    assert chisquare(counts, p * draws).pvalue > 0.001
    # the candidates nearest the positive (0.7, 0.75) are the most likely
    assert set(np.argsort(-p)[:2]) == {2, 3}


def test_absolute_kernel_and_b_shift() -> None:
    squared = SamplerConfig(scale=1.0, a=1.0, b=0.0, kernel="squared")
    shifted = SamplerConfig(scale=1.0, a=50.0, b=-0.3, kernel="squared")
    absolute = SamplerConfig(scale=1.0, a=3.0, kernel="absolute")
    assert np.argmax(simans_probabilities(SCORES, 0.8, squared)) == 1
    assert np.argmax(simans_probabilities(SCORES, 0.8, shifted)) == 5  # peak at s+ - 0.3 = 0.5
    p = simans_probabilities(SCORES, 0.8, absolute)
    assert p[0] == pytest.approx(p[3], rel=1e-9)  # |gap| = 0.1 for both
    assert np.isclose(p.sum(), 1.0)


def test_masked_candidates_are_never_drawn() -> None:
    eligible = np.ones(SCORES.size, dtype=bool)
    eligible[[2, 3]] = False  # a positive and a likely false negative
    rng = np.random.default_rng(1)
    for name in ("simans", "random", "topk", "percpos"):
        config = SamplerConfig(scale=1.0, name=name, n=3)  # type: ignore[arg-type]
        for _ in range(200):
            drawn = sample_negatives(SCORES, 0.72, config, rng, eligible)
            assert not set(drawn) & {2, 3}
            assert len(set(drawn)) == len(drawn)  # without replacement


def test_n_larger_than_pool_returns_whole_pool() -> None:
    rng = np.random.default_rng(2)
    drawn = sample_negatives(SCORES, 0.5, SamplerConfig(scale=1.0, n=50, depth=5), rng)
    assert sorted(drawn) == [0, 1, 2, 3, 4]  # depth caps the pool at the top 5


def test_large_dot_product_scores_do_not_underflow() -> None:
    scores = np.array([310.0, 295.5, 280.0, 150.0, 120.0])
    config = SamplerConfig(scale=1.0, n=2, a=0.5)
    p = simans_probabilities(scores, 300.0, config)
    assert np.all(np.isfinite(p)) and np.isclose(p.sum(), 1.0)
    drawn = sample_negatives(scores, 300.0, config, np.random.default_rng(3))
    assert len(drawn) == 2 and np.all(np.isfinite(scores[drawn]))


def test_other_samplers() -> None:
    rng = np.random.default_rng(4)
    assert list(sample_negatives(SCORES, 0.72, SamplerConfig(scale=1.0, name="topk", n=3), rng)) == [0, 1, 2]
    # percpos drops candidates above 0.95 * s+ = 0.684, then takes the top
    assert list(sample_negatives(SCORES, 0.72, SamplerConfig(scale=1.0, name="percpos", n=2), rng)) == [4, 5]
    assert sample_negatives(SCORES, 0.72, SamplerConfig(scale=1.0, name="inbatch"), rng).size == 0
    counts = np.bincount(
        np.concatenate(
            [
                sample_negatives(SCORES, 0.72, SamplerConfig(scale=1.0, name="random", n=2, depth=4), rng)
                for _ in range(4000)
            ]
        ),
        minlength=8,
    )
    assert counts[4:].sum() == 0 and counts[:4].min() > 1700  # uniform over the top 4


def test_seeded_draws_repeat() -> None:
    config = SamplerConfig(scale=1.0, n=3)
    a = sample_negatives(SCORES, 0.7, config, np.random.default_rng(7))
    b = sample_negatives(SCORES, 0.7, config, np.random.default_rng(7))
    assert list(a) == list(b)


def test_bad_config() -> None:
    with pytest.raises(ConfigError, match="unknown sampler 'hardest'"):
        SamplerConfig(name="hardest")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--score-scale must be 'auto' or a number, got 'big'"):
        SamplerConfig(scale="big")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="resolve the sampler's score scale first"):
        sample_negatives(SCORES, 0.7, SamplerConfig(), np.random.default_rng(0))


def test_auto_scale_is_the_loss_logit_scale() -> None:
    auto = SamplerConfig()
    assert auto.scale == "auto"
    assert auto.resolved(normalized=True, temperature=0.05).scale == 20.0
    assert auto.resolved(normalized=False, temperature=0.05).scale == 1.0
    assert SamplerConfig(scale="3").resolved(True, 0.05).scale == 3.0  # explicit wins


def test_effective_candidates_show_a_flat_kernel() -> None:
    # 100 cosine scores spread like a MiniLM top-100 (0.75 .. 0.45) around a positive at 0.70
    scores = np.linspace(0.75, 0.45, 100)
    flat, size = effective_candidates(scores, 0.70, SamplerConfig(scale=1.0))
    sharp, _ = effective_candidates(scores, 0.70, SamplerConfig().resolved(True, 0.05))
    assert size == 100
    assert flat > 99.0  # scale 1 on cosines: about uniform, SimANS in name only
    assert 20 < sharp < 60  # at the loss's logit scale (x20) the kernel focuses on ~half the pool
    assert effective_candidates(scores, 0.7, SamplerConfig(name="random", depth=30)) == (30.0, 30)
    assert effective_candidates(scores, 0.7, SamplerConfig(name="topk", n=7)) == (7.0, 100)
