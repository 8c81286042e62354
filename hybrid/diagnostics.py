"""What a sampler does to a pool file: sampled ranks and score gaps to the positive."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hybrid.mining import read_pool_meta
from hybrid.negatives import SamplerConfig, effective_candidates
from hybrid.training.data import PoolData

CROWDED = 0.8  # warn when the median effective candidates exceed this share of the pool


@dataclass(frozen=True)
class Diagnostics:
    """Every sampled negative's 1-based rank in its pool and its score minus the positive's."""

    ranks: np.ndarray
    gaps: np.ndarray
    queries: int
    effective: dict[str, float]

    def summary(self) -> dict[str, float]:
        if self.ranks.size == 0:
            return {"negatives": 0, **self.effective}
        q = np.percentile
        return {
            **self.effective,
            "negatives": int(self.ranks.size),
            "queries": self.queries,
            "rank_p10": float(q(self.ranks, 10)),
            "rank_median": float(q(self.ranks, 50)),
            "rank_p90": float(q(self.ranks, 90)),
            "gap_p10": float(q(self.gaps, 10)),
            "gap_median": float(q(self.gaps, 50)),
            "gap_p90": float(q(self.gaps, 90)),
        }


SUMMARY_SAMPLE = 20_000


def effective_summary(data: PoolData, config: SamplerConfig) -> dict[str, float]:
    """Effective number of candidates per query (exp of the draw distribution's entropy).

    Over at most ``SUMMARY_SAMPLE`` queries spread evenly over the pools (the medians of a
    sample that size are exact enough; memory stays flat at any query count). Returns
    median, p10 and p90 of it, the median pool size, and ``share``: the median
    effective count over the median pool (near 1: the sampler is about uniform).
    """
    pairs = [effective_candidates(s, p, config, e) for s, p, e in data.pool_entries(SUMMARY_SAMPLE)]
    eff = np.array([x for x, _ in pairs])
    size = np.array([n for _, n in pairs])
    pool = float(np.median(size)) if size.size else 0.0
    median = float(np.median(eff)) if eff.size else 0.0
    return {
        "effective_median": round(median, 2),
        "effective_p10": round(float(np.percentile(eff, 10)), 2) if eff.size else 0.0,
        "effective_p90": round(float(np.percentile(eff, 90)), 2) if eff.size else 0.0,
        "pool_median": pool,
        "share": round(median / pool, 3) if pool else 0.0,
    }


def crowded_warning(summary: dict[str, float], config: SamplerConfig) -> str | None:
    """A warning when SimANS samples nearly uniformly (median effective > 80 % of the pool)."""
    if config.name != "simans" or summary["share"] <= CROWDED:
        return None
    return (
        f"SimANS draws from {summary['effective_median']:.0f} of {summary['pool_median']:.0f} candidates "
        f"(median): about uniform. Raise --a or --score-scale (now {config.scale}) to focus near the positive"
    )


def resolve_for_pools(pools: Path, config: SamplerConfig, temperature: float) -> SamplerConfig:
    """Resolve ``scale="auto"`` from the pool's model (normalised or not, as recorded when mined)."""
    meta = read_pool_meta(pools)
    normalized = bool(meta.get("normalized", True))
    return config.resolved(normalized, temperature)


def sampler_diagnostics(pools: Path, config: SamplerConfig, seed: int = 13, rounds: int = 1) -> Diagnostics:
    """Sample ``rounds`` times per query, as training would, and record ranks and gaps."""
    data = PoolData(pools, config, seed)
    ranks: list[int] = []
    gaps: list[float] = []
    for step in range(rounds * len(data)):
        entry, example = data.draw(step, 0, 1)
        position = {d: i for i, d in enumerate(entry.ids[:])}
        positive = dict(entry.positives)[example.positive]
        for neg in example.negatives:
            ranks.append(position[neg] + 1)
            gaps.append(float(entry.scores[position[neg]] - positive))
    return Diagnostics(np.array(ranks), np.array(gaps), len(data), effective_summary(data, config))


def plot_diagnostics(diag: Diagnostics, path: Path, title: str) -> Path:
    """Two histograms (sampled rank, score gap) saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.hist(diag.ranks, bins=min(50, max(5, int(diag.ranks.max(initial=1)))), color="#3b6ea5")
    left.set(xlabel="rank of sampled negative in its pool", ylabel="negatives", title="sampled ranks")
    right.hist(diag.gaps, bins=50, color="#c8553d")
    right.axvline(0.0, color="black", linewidth=1)
    right.set(xlabel="s(q, d-) - s(q, d+)", title="score gap to the positive")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
