"""The guard: a trained model replaces the index's only when it wins on a dev split.

A dev split is the user's (``--dev-queries``/``--dev-qrels``) or carved from the training
queries (a seeded share, never trained or mined on). Its queries get one fixed candidate
set each, BM25 top-k union dense top-k of the index as it was before training; every
model the run could leave behind (the base, each checkpoint, base/trained weight
interpolations) ranks those same candidates, embedded exactly as a refresh would embed
them. The base ranks them with the index's stored vectors, so "base" is the index as it
is. Scoring a dev subcorpus instead of re-embedding the whole index keeps the choice
cheap; a model that would only win by finding documents outside every candidate set is
not seen, which can only make the guard keep the base more often.

The choice is the best mean dev nDCG@10; it replaces the base only when it is better
beyond noise (a paired randomization test). Otherwise the index is left as it was.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hybrid.backends.base import Backend
from hybrid.corpus import iter_queries, read_qrels
from hybrid.encoder import Encoder, EncoderSettings
from hybrid.errors import ConfigError
from hybrid.evaluation.compare import paired_randomization_test
from hybrid.types import Document

log = logging.getLogger(__name__)

DEV_DIR = "dev"  # OUT/dev: the carved split and the dev candidate sets
CANDIDATES_DIR = "candidates"  # OUT/candidates/<name>: interpolated models the guard scored
NDCG_DEPTH = 10


@dataclass(frozen=True)
class GuardConfig:
    """How the guard carves its dev split and decides; part of the training config."""

    enabled: bool = True
    dev_share: float = 0.1  # of the labelled training queries, when no dev set is given
    dev_min: int = 50  # fewer dev queries than this and the guard falls back to the loss alone
    dev_max: int = 500  # bounds the dev subcorpus each candidate embeds
    depth: int = 30  # BM25 top-k and dense top-k per dev query: the candidates ranked
    p_value: float = 0.05  # the chosen model must beat the base with p below this
    alphas: tuple[float, ...] = (0.5, 1.0)  # trained-weight shares scored first; then one step between the best two

    def check(self) -> str | None:
        """The first invalid field as a one-line message, else ``None``."""
        if not 0 < self.dev_share < 1:
            return "--dev-share must be between 0 and 1"
        if self.dev_min < 1 or self.dev_max < self.dev_min:
            return "the guard needs 1 <= dev_min <= dev_max"
        if self.depth < 1:
            return "--guard-depth must be at least 1"
        if not 0 < self.p_value <= 1:
            return "--guard-p must be in (0, 1]"
        if not self.alphas or any(not 0 < a <= 1 for a in self.alphas):
            return "guard alphas must lie in (0, 1]"
        return None


@dataclass(frozen=True)
class DevSplit:
    """Dev queries and qrels; ``exclude``: query ids held out of training and mining."""

    queries: Path
    qrels: Path
    carved: bool
    exclude: frozenset[str] = frozenset()
    train_queries: Path | None = None  # the training queries less the held-out ones (carved only)

    def to_dict(self) -> dict[str, Any]:
        return {
            "queries": str(self.queries),
            "qrels": str(self.qrels),
            "carved": self.carved,
            "exclude": sorted(self.exclude),
            "train_queries": str(self.train_queries) if self.train_queries else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> DevSplit | None:
        if not data:
            return None
        train = data.get("train_queries")
        return cls(
            Path(data["queries"]),
            Path(data["qrels"]),
            bool(data["carved"]),
            frozenset(data.get("exclude", ())),
            Path(train) if train else None,
        )


def carve_dev(
    queries: Path, qrels: Path, out: Path, guard: GuardConfig, seed: int
) -> tuple[DevSplit | None, str | None]:
    """Hold out a seeded share of the labelled training queries as a dev split.

    Returns ``(split, None)``, or ``(None, reason)`` when there are too few labelled
    queries to hold any out (the guard then falls back to the training loss).
    """
    labels = read_qrels(qrels)
    labelled = sorted(q.id for q in iter_queries(queries) if any(grade > 0 for grade in labels.get(q.id, {}).values()))
    size = min(guard.dev_max, max(guard.dev_min, round(guard.dev_share * len(labelled))))
    if len(labelled) - size < size:
        return None, (
            f"{len(labelled)} labelled training queries are too few to hold out {size} for a dev set; "
            "the guard falls back to the training loss (give --dev-queries/--dev-qrels to guard the run)"
        )
    rng = np.random.default_rng([seed, 7919])
    held = frozenset(labelled[i] for i in rng.choice(len(labelled), size=size, replace=False))
    folder = out / DEV_DIR
    folder.mkdir(parents=True, exist_ok=True)
    dev_queries, dev_qrels, train_queries = (
        folder / "queries.jsonl",
        folder / "qrels.tsv",
        folder / "train-queries.jsonl",
    )
    with dev_queries.open("w") as dev, train_queries.open("w") as train:
        for query in iter_queries(queries):
            line = json.dumps({"_id": query.id, "text": query.text}) + "\n"
            (dev if query.id in held else train).write(line)
    with dev_qrels.open("w") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for qid in sorted(held):
            for doc, grade in sorted(labels[qid].items()):
                fh.write(f"{qid}\t{doc}\t{grade}\n")
    return DevSplit(dev_queries, dev_qrels, True, held, train_queries), None


@dataclass
class DevPool:
    """Each dev query's fixed candidates (ids), their documents, and the judgements."""

    qids: list[str]
    queries: list[str]
    candidates: list[list[str]]
    qrels: dict[str, dict[str, int]]
    documents: list[Document] = field(default_factory=list)  # the union of all candidates, once each
    absent: int = 0  # judged documents the index does not hold (their judgements skipped)
    emptied: int = 0  # judged queries left with no positive in the index (skipped)

    def note(self, index: str) -> str | None:
        """What the run's summary says of skipped judgements (None: none skipped)."""
        if not self.absent:
            return None
        many = "queries judged on those alone were" if self.emptied > 1 else "query judged on those alone was"
        left = f"; {self.emptied} dev {many} dropped" if self.emptied else ""
        return f"the dev qrels name {self.absent} documents not in index '{index}': skipped{left}"

    def save(self, path: Path) -> None:
        data = {"qids": self.qids, "queries": self.queries, "candidates": self.candidates, "qrels": self.qrels}
        path.write_text(json.dumps(data) + "\n")

    @classmethod
    def load(cls, path: Path) -> DevPool:
        data = json.loads(path.read_text())
        return cls(data["qids"], data["queries"], data["candidates"], data["qrels"])


def build_dev_pool(backend: Backend, index: str, split: DevSplit, depth: int, query_vectors: Any) -> DevPool:
    """BM25 top-``depth`` union dense top-``depth`` of the index for every judged dev query.

    ``query_vectors``: a function from query texts to the index model's query vectors.
    """
    qrels = read_qrels(split.qrels)
    judged = [q for q in iter_queries(split.queries) if any(g > 0 for g in qrels.get(q.id, {}).values())]
    if not judged:
        raise ConfigError("no dev query has qrels: check that the dev queries' ids match the dev qrels")
    named = sorted({d for q in judged for d, g in qrels[q.id].items() if g > 0})
    held = set(_documents(backend, index, named))
    # A judged document the index lacks can never be ranked by any candidate: it is counted
    # and left out rather than shrinking every candidate's nDCG on its query.
    kept = {q.id: {d: g for d, g in qrels[q.id].items() if d in held} for q in judged}
    absent = len(set(named) - held)
    emptied = {q.id for q in judged if not any(g > 0 for g in kept[q.id].values())}
    if len(emptied) == len(judged):
        raise ConfigError(
            f"none of the dev qrels' documents is in index '{index}': check that the dev qrels match the corpus"
        )
    judged = [q for q in judged if q.id not in emptied]
    pool = DevPool([q.id for q in judged], [q.text for q in judged], [], {q.id: kept[q.id] for q in judged})
    pool.absent, pool.emptied = absent, len(emptied)
    for start in range(0, len(judged), 64):
        texts = pool.queries[start : start + 64]
        bm25, knn = backend.bm25_and_knn(index, texts, query_vectors(texts), depth)
        for lexical, dense in zip(bm25, knn, strict=True):
            pool.candidates.append(list(dict.fromkeys([h.id for h in lexical] + [h.id for h in dense])))
    return pool


def attach_documents(pool: DevPool, backend: Backend, index: str) -> None:
    """Fetch the union of the candidates' documents once (their text is what candidates embed)."""
    ids = sorted({d for c in pool.candidates for d in c})
    found = _documents(backend, index, ids)
    pool.candidates = [[d for d in c if d in found] for c in pool.candidates]
    pool.documents = [found[d] for d in ids if d in found]


def _documents(backend: Backend, index: str, ids: list[str]) -> dict[str, Document]:
    """The documents of ``ids`` the index holds, fetched 500 at a time."""
    found: dict[str, Document] = {}
    for start in range(0, len(ids), 500):
        found.update(backend.get(index, ids[start : start + 500]))
    return found


def ndcg_at(ranking: Sequence[str], judged: dict[str, int], depth: int = NDCG_DEPTH) -> float:
    """nDCG@depth as trec_eval computes it: gain = grade, log2 discount, ideal over all judgements."""
    gains = [judged.get(d, 0) for d in ranking[:depth]]
    dcg = sum(g / math.log2(r + 2) for r, g in enumerate(gains) if g > 0)
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:depth]
    best = sum(g / math.log2(r + 2) for r, g in enumerate(ideal))
    return dcg / best if best > 0 else 0.0


def per_query_ndcg(pool: DevPool, scores: Iterable[dict[str, float]]) -> np.ndarray:
    """Per-query nDCG@10 of each query's candidates ranked by ``scores`` (ties: by id, as trec_eval)."""
    out = []
    for qid, candidate_scores in zip(pool.qids, scores, strict=True):
        ranking = sorted(candidate_scores, key=lambda d: (-candidate_scores[d], d))
        out.append(ndcg_at(ranking, pool.qrels[qid]))
    return np.asarray(out, dtype=np.float64)


def base_scores(pool: DevPool, backend: Backend, index: str, query_vectors: Any) -> np.ndarray:
    """The index as it is: its stored vectors and its own query encoder."""
    scored = backend.score(index, query_vectors(pool.queries), pool.candidates)
    return per_query_ndcg(pool, scored)


def model_scores(pool: DevPool, encoder: Encoder) -> np.ndarray:
    """A candidate model's dev ranking: the dev subcorpus embedded as a refresh would embed it."""
    row = {doc.id: i for i, doc in enumerate(pool.documents)}
    passages = encoder.encode_passages(pool.documents)  # (D, dims)
    queries = encoder.encode_queries(pool.queries)  # (Q, dims)
    scored = []
    for q, candidates in zip(queries, pool.candidates, strict=True):
        values = passages[[row[d] for d in candidates]] @ q if candidates else np.empty(0)
        scored.append(dict(zip(candidates, values.tolist(), strict=True)))
    return per_query_ndcg(pool, scored)


def query_model_scores(pool: DevPool, encoder: Encoder, backend: Backend, index: str) -> np.ndarray:
    """A candidate query model's dev ranking against the index's stored vectors (query-only runs)."""
    return per_query_ndcg(pool, backend.score(index, encoder.encode_queries(pool.queries), pool.candidates))


@dataclass
class Scored:
    """One model the run could leave behind, with its dev figures."""

    name: str  # "base", "step-0000150", "alpha-0.50"
    path: str | None  # model directory (None: the base, already in the index)
    ndcg: float
    per_query: list[float]
    alpha: float | None = None
    step: int | None = None

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "per_query"}


@dataclass
class Decision:
    """What the guard chose and why."""

    base: float
    best: str
    best_ndcg: float
    p_value: float
    replace: bool
    chosen: str | None  # the model directory that replaces the base, when ``replace``
    scored: list[dict[str, Any]]
    queries: int

    def line(self) -> str:
        """One line for the run's summary."""
        verdict = (
            "replaces the index's model" if self.replace else "not better beyond noise: the index is left as it was"
        )
        return (
            f"guard: base dev nDCG@10 {self.base:.4f}, best {self.best} {self.best_ndcg:.4f} "
            f"({self.best_ndcg - self.base:+.4f}, paired p = {self.p_value:.3f}, {self.queries} dev queries): {verdict}"
        )


def decide(base: Scored, candidates: Sequence[Scored], p_max: float) -> Decision:
    """The best candidate by mean dev nDCG@10 (earliest on ties); it replaces the base only
    when it is better and the paired test gives p below ``p_max``."""
    best = max(candidates, key=lambda c: c.ndcg) if candidates else base
    p = 1.0
    if best is not base:
        p = paired_randomization_test(np.asarray(base.per_query), np.asarray(best.per_query))
    replace = best is not base and best.ndcg > base.ndcg and p < p_max
    return Decision(
        base=base.ndcg,
        best=best.name,
        best_ndcg=best.ndcg,
        p_value=p,
        replace=replace,
        chosen=best.path if replace else None,
        scored=[c.summary() for c in [base, *candidates]],
        queries=len(base.per_query),
    )


def interpolate(base_dir: Path, trained_dir: Path, alpha: float, out: Path, settings: EncoderSettings) -> Path:
    """``alpha`` x trained + (1 - alpha) x base, weight by weight, saved as a model directory
    that embeds with ``settings`` (the index's)."""
    import torch

    from hybrid.training.model import DualEncoder

    shared = not (trained_dir / "query_encoder").is_dir()
    trained = DualEncoder(trained_dir, settings, shared=shared)
    base = DualEncoder(base_dir, settings, shared=shared)
    with torch.no_grad():
        for mine, theirs in zip(trained.towers(), base.towers(), strict=True):
            own = theirs.state_dict()
            for name, value in mine.state_dict().items():
                if value.is_floating_point():
                    value.mul_(alpha).add_(own[name].to(value.dtype), alpha=1.0 - alpha)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    trained.save(tmp, settings)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def next_alpha(scored: dict[float, float]) -> float | None:
    """One refinement of the interpolation grid (``scored``: alpha -> dev nDCG@10, 0.0 the
    base): the midpoint between the best alpha and its better neighbour."""
    alphas = sorted(scored)
    best = max(alphas, key=lambda a: (scored[a], -a))
    i = alphas.index(best)
    neighbours = [alphas[j] for j in (i - 1, i + 1) if 0 <= j < len(alphas)]
    if not neighbours:
        return None
    side = max(neighbours, key=lambda a: scored[a])
    candidate = round((best + side) / 2, 4)
    return None if candidate in scored or candidate <= 0 else candidate


__all__ = [
    "Decision",
    "DevPool",
    "DevSplit",
    "GuardConfig",
    "Scored",
    "attach_documents",
    "base_scores",
    "build_dev_pool",
    "carve_dev",
    "decide",
    "interpolate",
    "model_scores",
    "ndcg_at",
    "next_alpha",
]
