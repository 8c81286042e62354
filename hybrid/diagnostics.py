"""What a sampler does to a pool file: sampled ranks and score gaps to the positive."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hybrid.negatives import SamplerConfig
from hybrid.training.data import PoolData


@dataclass(frozen=True)
class Diagnostics:
    """Every sampled negative's 1-based rank in its pool and its score minus the positive's."""

    ranks: np.ndarray
    gaps: np.ndarray
    queries: int

    def summary(self) -> dict[str, float]:
        if self.ranks.size == 0:
            return {"negatives": 0}
        q = np.percentile
        return {
            "negatives": int(self.ranks.size),
            "queries": self.queries,
            "rank_p10": float(q(self.ranks, 10)),
            "rank_median": float(q(self.ranks, 50)),
            "rank_p90": float(q(self.ranks, 90)),
            "gap_p10": float(q(self.gaps, 10)),
            "gap_median": float(q(self.gaps, 50)),
            "gap_p90": float(q(self.gaps, 90)),
        }


def sampler_diagnostics(pools: Path, config: SamplerConfig, seed: int = 13, rounds: int = 1) -> Diagnostics:
    """Sample ``rounds`` times per query, as training would, and record ranks and gaps."""
    data = PoolData(pools, config, seed)
    ranks: list[int] = []
    gaps: list[float] = []
    position = {e.qid: {d: i + 1 for i, d in enumerate(e.ids)} for e in data.entries}
    scores = {e.qid: dict(zip(e.ids, e.scores, strict=True)) for e in data.entries}
    positives = {e.qid: dict(e.positives) for e in data.entries}
    for step in range(rounds * len(data)):
        (example,) = data.batch(step, 1)
        for neg in example.negatives:
            ranks.append(position[example.qid][neg])
            gaps.append(float(scores[example.qid][neg] - positives[example.qid][example.positive]))
    return Diagnostics(np.array(ranks), np.array(gaps), len(data))


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
