"""Negative samplers: pure functions over scores, seeded, never touching a model.

SimANS (Zhou et al., EMNLP 2022) samples hard negatives that score *near* the positive:

    p_i ∝ exp(-a · (scale · (s_i - s⁺) - b)²)        kernel="squared" (the paper)
    p_i ∝ exp(-a · |scale · (s_i - s⁺) - b|)         kernel="absolute" (reference MS MARCO)

over the top-``depth`` candidates of the pool, positives and likely false negatives removed.
Sign of ``b``: the paper writes ``- b``; the reference code (microsoft/SimXNS) writes
``+ b`` with b = 1.0 for NQ, which is ``b = -1.0`` here (peak one unit *below* the positive).
``scale`` makes the score scale explicit: ``a`` means something only relative to it (cosine
scores live in [-1, 1], dot products of unnormalised BERT vectors in the tens). The default
``scale="auto"`` puts the kernel on the logits the loss sees: 1/temperature for a normalised
model (cosine / 0.05 spans ~20 units over a pool, so a=0.5 is selective), 1 otherwise. With
scale 1 on cosine scores the kernel is nearly flat over the top 100 and SimANS is random
sampling under another name; :func:`effective_candidates` shows it (exp of the entropy).

Defaults and their source: a=0.5 (the paper and microsoft/SimXNS for NQ, TriviaQA and MS
MARCO documents), b=0 (SimXNS TriviaQA / MS MARCO documents; NQ uses b=-1 here), squared
kernel (the paper); the reference MS MARCO passage run uses the absolute kernel with a=3.

Sampling is Gumbel top-n on the logits, so weights are never exponentiated and scores in
the hundreds cannot underflow (the reference code's issue #7).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from hybrid.errors import ConfigError

SamplerName = Literal["simans", "random", "topk", "percpos", "inbatch"]
SAMPLERS: tuple[str, ...] = ("simans", "random", "topk", "percpos", "inbatch")
Kernel = Literal["squared", "absolute"]


@dataclass(frozen=True)
class SamplerConfig:
    """Which sampler and its parameters. Defaults: the paper's squared kernel, a=0.5, b=0."""

    name: SamplerName = "simans"
    # 3: SciFact scored within seed noise of 7 at about 0.7x the step time (bench/train.py --knobs)
    n: int = 3
    depth: int = 100
    a: float = 0.5
    b: float = 0.0
    kernel: Kernel = "squared"
    scale: float | Literal["auto"] = "auto"
    percpos: float = 0.95
    # With several positives, whose score centres the kernel: the positive drawn this step
    # ("sampled"), the query's best-scored one ("max") or their mean ("mean").
    anchor: Literal["sampled", "max", "mean"] = "sampled"

    def __post_init__(self) -> None:
        if self.anchor not in ("sampled", "max", "mean"):
            raise ConfigError(f"unknown SimANS anchor '{self.anchor}'; choose sampled, max or mean")
        if self.name not in SAMPLERS:
            raise ConfigError(f"unknown sampler '{self.name}'; choose one of {', '.join(SAMPLERS)}")
        if self.kernel not in ("squared", "absolute"):
            raise ConfigError(f"unknown SimANS kernel '{self.kernel}'; choose squared or absolute")
        if isinstance(self.scale, str) and self.scale != "auto":
            try:
                object.__setattr__(self, "scale", float(self.scale))
            except ValueError:
                raise ConfigError(f"--score-scale must be 'auto' or a number, got '{self.scale}'") from None
        if self.n < 0 or self.depth < 1 or self.a < 0 or (self.scale != "auto" and float(self.scale) <= 0):
            raise ConfigError("sampler needs n >= 0, depth >= 1, a >= 0 and scale > 0")

    def resolved(self, normalized: bool, temperature: float) -> SamplerConfig:
        """``scale="auto"`` made concrete: 1/temperature for a normalised model, else 1."""
        if self.scale != "auto":
            return self
        return replace(self, scale=round(1.0 / temperature, 6) if normalized else 1.0)


def pool_indices(scores: np.ndarray, eligible: np.ndarray | None, depth: int) -> np.ndarray:
    """Indices of the top-``depth`` eligible candidates, best first (stable on ties)."""
    idx = np.arange(scores.shape[0]) if eligible is None else np.flatnonzero(eligible)
    order = np.argsort(-scores[idx], kind="stable")
    return idx[order[:depth]]


def simans_logits(scores: np.ndarray, positive: float, config: SamplerConfig) -> np.ndarray:
    """Unnormalised log-probabilities of the SimANS kernel."""
    if config.scale == "auto":
        raise ConfigError("resolve the sampler's score scale first (SamplerConfig.resolved)")
    gap = float(config.scale) * (scores.astype(np.float64) - positive) - config.b
    return -config.a * (gap * gap if config.kernel == "squared" else np.abs(gap))


def simans_probabilities(scores: np.ndarray, positive: float, config: SamplerConfig) -> np.ndarray:
    """Normalised p_i over ``scores`` (computed in log space)."""
    logits = simans_logits(scores, positive, config)
    logits -= logits.max()
    p = np.exp(logits)
    result: np.ndarray = p / p.sum()
    return result


def effective_candidates(
    scores: np.ndarray, positive: float, config: SamplerConfig, eligible: np.ndarray | None = None
) -> tuple[float, int]:
    """``(exp(entropy) of one draw's distribution, pool size)`` for one query.

    Equal to the pool size for uniform sampling; near 1 when one candidate dominates.
    topk and percpos are deterministic: their "effective" count is what they return.
    """
    pool = pool_indices(scores, eligible, config.depth)
    if pool.size == 0:
        return 0.0, 0
    if config.name == "random":
        return float(pool.size), int(pool.size)
    if config.name in ("topk", "percpos", "inbatch"):
        return float(min(config.n, pool.size)), int(pool.size)
    p = simans_probabilities(scores[pool], positive, config)
    nz = p[p > 0]
    return float(np.exp(-(nz * np.log(nz)).sum())), int(pool.size)


def gumbel_top_n(logits: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n draws without replacement with probabilities ∝ exp(logits) (Gumbel-max trick)."""
    if n >= logits.shape[0]:
        n = logits.shape[0]
    keys = logits + rng.gumbel(size=logits.shape[0])
    return np.argsort(-keys, kind="stable")[:n]


def sample_negatives(
    scores: np.ndarray,
    positive: float,
    config: SamplerConfig,
    rng: np.random.Generator,
    eligible: np.ndarray | None = None,
) -> np.ndarray:
    """Indices into ``scores`` of up to ``config.n`` negatives for one query.

    ``eligible`` masks out positives and likely false negatives; fewer than ``n`` come back
    when the pool is smaller. ``inbatch`` returns none (in-batch negatives only).
    """
    if config.name == "inbatch" or config.n == 0:
        return np.empty(0, dtype=np.int64)
    pool = pool_indices(scores, eligible, config.depth)
    if pool.size == 0:
        return pool
    if config.name == "topk":
        return pool[: config.n]
    if config.name == "random":
        return pool[gumbel_top_n(np.zeros(pool.size), config.n, rng)]
    if config.name == "percpos":
        threshold = positive - (1.0 - config.percpos) * abs(positive)
        return pool[scores[pool] <= threshold][: config.n]
    return pool[gumbel_top_n(simans_logits(scores[pool], positive, config), config.n, rng)]
