"""Plain data types shared by every layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

SearchMode = Literal["bm25", "dense", "hybrid"]
SEARCH_MODES: tuple[str, ...] = ("bm25", "dense", "hybrid")


@dataclass(frozen=True, slots=True)
class Document:
    """One passage or document of a corpus."""

    id: str
    text: str
    title: str = ""


@dataclass(frozen=True, slots=True)
class Query:
    """One query (topic)."""

    id: str
    text: str


@dataclass(slots=True)
class Hit:
    """One ranked result. ``title``/``text`` are filled when the backend returns them.

    Not frozen, unlike the other records here: a frozen dataclass sets each field through
    ``object.__setattr__``, and a hybrid search builds a hit for every candidate of both
    sides, which made that a visible share of a served query (a profile showed it). Treat
    it as read-only all the same (``dataclasses.replace`` makes a changed copy)."""

    id: str
    score: float
    title: str | None = None
    text: str | None = None
    # Per-side scores of a fused hit, e.g. {"bm25": 12.3, "dense": 0.71}.
    sources: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class IndexInfo:
    """What a backend knows about one index."""

    name: str
    backend: str
    count: int
    dims: int
    model: str
    version: str
    similarity: str
    extra: dict[str, object] = field(default_factory=dict)
    # The version's VectorRecipe as stored (hybrid.manifest); None for indices made before it.
    recipe: dict[str, object] | None = None
