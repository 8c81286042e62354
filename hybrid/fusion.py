"""Client-side fusion of ranked lists: reciprocal rank fusion and linear fusion.

Shared by both backends (nothing here needs a cluster feature or license). Ties are broken
by document id so results are deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from hybrid.errors import ConfigError
from hybrid.types import Hit

FusionMethod = Literal["rrf", "linear"]
Normalization = Literal["minmax", "zscore"]


@dataclass(frozen=True)
class FusionConfig:
    """How hybrid search combines BM25 and dense lists."""

    method: FusionMethod = "rrf"
    rrf_k: float = 60.0
    normalization: Normalization = "minmax"
    bm25_weight: float = 0.5
    dense_weight: float = 0.5
    depth: int = 100  # hits fetched from each side before fusing

    def __post_init__(self) -> None:
        if self.method not in ("rrf", "linear"):
            raise ConfigError(f"unknown fusion '{self.method}'; choose rrf or linear")
        if self.normalization not in ("minmax", "zscore"):
            raise ConfigError(f"unknown normalisation '{self.normalization}'; choose minmax or zscore")
        if self.rrf_k < 0 or self.depth < 1 or min(self.bm25_weight, self.dense_weight) < 0:
            raise ConfigError("fusion needs rrf_k >= 0, depth >= 1 and non-negative weights")

    @property
    def weights(self) -> dict[str, float]:
        return {"bm25": self.bm25_weight, "dense": self.dense_weight}


def rrf(
    lists: Mapping[str, Sequence[Hit]],
    k: float = 60.0,
    weights: Mapping[str, float] | None = None,
    limit: int | None = None,
) -> list[Hit]:
    """Reciprocal rank fusion: ``score(d) = sum_s w_s / (k + rank_s(d))``, ranks from 1;
    the first ``limit`` of them (all by default)."""
    fused: dict[str, float] = {}
    for side, hits in lists.items():
        w = 1.0 if weights is None else weights.get(side, 1.0)
        for rank, hit in enumerate(hits, start=1):
            fused[hit.id] = fused.get(hit.id, 0.0) + w / (k + rank)
    return _merge(lists, fused, limit)


def normalize(scores: Sequence[float], method: Normalization) -> list[float]:
    """Min-max to [0, 1] (all-equal -> 1.0) or z-score (zero spread -> 0.0)."""
    if not scores:
        return []
    if method == "minmax":
        lo, hi = min(scores), max(scores)
        return [1.0 if hi == lo else (s - lo) / (hi - lo) for s in scores]
    mean = sum(scores) / len(scores)
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
    return [0.0 if std == 0 else (s - mean) / std for s in scores]


def linear(
    lists: Mapping[str, Sequence[Hit]],
    method: Normalization = "minmax",
    weights: Mapping[str, float] | None = None,
    limit: int | None = None,
) -> list[Hit]:
    """Weighted sum of per-list normalised scores; the first ``limit`` (all by default).

    A document missing from a list gets that list's lowest normalised score (0 for min-max),
    the usual convention for fusing truncated top-k lists.
    """
    fused: dict[str, float] = {}
    all_ids = {h.id for hits in lists.values() for h in hits}
    for side, hits in lists.items():
        w = 1.0 if weights is None else weights.get(side, 1.0)
        norm = normalize([h.score for h in hits], method)
        floor = min(norm) if norm else 0.0
        by_id = {h.id: n for h, n in zip(hits, norm, strict=True)}
        for doc_id in all_ids:
            fused[doc_id] = fused.get(doc_id, 0.0) + w * by_id.get(doc_id, floor)
    return _merge(lists, fused, limit)


def fuse(bm25: Sequence[Hit], dense: Sequence[Hit], config: FusionConfig, k: int) -> list[Hit]:
    """Fuse one query's BM25 and dense hits into the top ``k``."""
    lists = {"bm25": bm25, "dense": dense}
    if config.method == "rrf":
        return rrf(lists, config.rrf_k, config.weights, k)
    return linear(lists, config.normalization, config.weights, k)


def _merge(lists: Mapping[str, Sequence[Hit]], fused: dict[str, float], limit: int | None = None) -> list[Hit]:
    """The fused hits in order (ties by id), each with its sides' scores: built for the
    first ``limit`` only, as a search at depth 100 and k 10 keeps a tenth of them."""
    order = sorted(fused, key=lambda d: (-fused[d], d))[:limit]
    first: dict[str, Hit] = {}
    sources: dict[str, dict[str, float]] = {d: {} for d in order}
    for side, hits in lists.items():
        for hit in hits:
            if hit.id in sources:
                first.setdefault(hit.id, hit)
                sources[hit.id][side] = hit.score
    return [Hit(id=d, score=fused[d], title=first[d].title, text=first[d].text, sources=sources[d]) for d in order]
