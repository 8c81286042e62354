"""Training examples from mined pools: one positive and sampled negatives per query.

Which query, which positive and which negatives a step sees is a pure function of
(seed, step), so an interrupted run resumes on exactly the data it would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hybrid.errors import ConfigError
from hybrid.mining import Pool, read_pools
from hybrid.negatives import SamplerConfig, sample_negatives


@dataclass(frozen=True)
class Example:
    """One query with its positive and negatives (document ids)."""

    qid: str
    query: str
    positive: str
    negatives: tuple[str, ...]
    # Every labelled positive (and likely false negative) of the query: never its negative,
    # wherever in the batch it turns up.
    not_negative: frozenset[str] = frozenset()


@dataclass(frozen=True)
class _Entry:
    qid: str
    query: str
    positives: tuple[tuple[str, float], ...]
    ids: tuple[str, ...]
    scores: np.ndarray  # float64 candidate scores, best first
    eligible: np.ndarray  # bool: not a likely false negative
    not_negative: frozenset[str]


class PoolData:
    """Pools held compactly in memory; ``batch(step)`` draws examples."""

    def __init__(self, path: Path, sampler: SamplerConfig, seed: int) -> None:
        self.path = path
        self.sampler = sampler
        self.seed = seed
        self.entries: list[_Entry] = []
        self.skipped = 0  # queries without a positive in the index
        for pool in read_pools(path):
            entry = _entry(pool)
            if entry is None:
                self.skipped += 1
            else:
                self.entries.append(entry)
        if not self.entries:
            raise ConfigError(f"{path} has no query with a positive to train on")
        self._order: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def _permutation(self, epoch: int) -> np.ndarray:
        """The query order of ``epoch`` (a function of seed and epoch; cached for the current one)."""
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.entries)))
        return self._order[1]

    def batch(self, step: int, size: int) -> list[Example]:
        """The ``size`` examples of global micro-step ``step`` (epochs reshuffle by seed)."""
        out = []
        for j in range(size):
            i = step * size + j
            epoch, pos = divmod(i, len(self.entries))
            entry = self.entries[int(self._permutation(epoch)[pos])]
            rng = np.random.default_rng([self.seed, step, j, 1])
            positive, pos_score = entry.positives[int(rng.integers(len(entry.positives)))]
            drawn = sample_negatives(entry.scores, pos_score, self.sampler, rng, entry.eligible)
            negatives = tuple(entry.ids[k] for k in drawn)
            out.append(Example(entry.qid, entry.query, positive, negatives, entry.not_negative))
        return out

    def pool_entries(self) -> list[tuple[np.ndarray, float, np.ndarray]]:
        """``(scores, mean positive score, eligible)`` per query, for sampler diagnostics."""
        return [(e.scores, float(np.mean([s for _, s in e.positives])), e.eligible) for e in self.entries]


def _entry(pool: Pool) -> _Entry | None:
    positives = tuple(pool.positives)
    candidates = pool.candidates
    if not positives:
        # Answer-labelled data (NQ) without gold passages: DPR's convention takes the best
        # scoring passage that contains an answer as the positive.
        flagged = [c for c in candidates if c[3]]
        if not flagged:
            return None
        positives = ((flagged[0][0], flagged[0][1]),)
        candidates = [c for c in candidates if c[0] != flagged[0][0]]
    flagged_ids = {c[0] for c in pool.candidates if c[3]}
    return _Entry(
        qid=pool.qid,
        query=pool.query,
        positives=positives,
        ids=tuple(c[0] for c in candidates),
        scores=np.array([c[1] for c in candidates], dtype=np.float64),
        eligible=np.array([not c[3] for c in candidates], dtype=bool),
        not_negative=frozenset({d for d, _ in positives} | flagged_ids),
    )
