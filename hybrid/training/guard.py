"""The guard inside a training run: its dev split, the models it scored, its verdicts.

Rank 0 alone holds it. It is set up once before the first step (split carved, dev
candidates fixed, the base scored from the index's stored vectors), scores checkpoints
as they are saved, allows a refresh only for a model not worse than the base, and at the
end chooses what (if anything) replaces the index's model. See
:mod:`hybrid.training.selection` for the method.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hybrid.backends.base import Backend
from hybrid.manifest import VectorRecipe
from hybrid.training.config import TrainConfig
from hybrid.training.selection import (
    CANDIDATES_DIR,
    DEV_DIR,
    Decision,
    DevPool,
    DevSplit,
    Scored,
    attach_documents,
    base_scores,
    build_dev_pool,
    carve_dev,
    decide,
    interpolate,
    model_scores,
    next_alpha,
    query_model_scores,
)
from hybrid.training.setup import recipe_encoder

log = logging.getLogger(__name__)
POOL_FILE = "pool.json"


def dev_split(config: TrainConfig) -> tuple[DevSplit | None, str | None]:
    """The user's dev set, else one carved from the training queries; ``(None, reason)``
    when the guard is off or cannot have one."""
    if config.dev_queries is not None and config.dev_qrels is not None:
        return DevSplit(config.dev_queries, config.dev_qrels, carved=False), None
    if not config.guard:
        return None, None
    if config.qrels is None:
        return None, "the guard needs qrels to carve a dev set (answers-only data); it falls back to the training loss"
    return carve_dev(config.queries, config.qrels, config.out, config.guard_config(), config.seed)


class Guard:
    """Dev split, fixed dev candidates, the base's figures and every model scored so far."""

    def __init__(self, split: DevSplit, pool: DevPool, base: Scored, base_dir: Path, recipe: VectorRecipe) -> None:
        self.split, self.pool, self.base, self.base_dir, self.recipe = split, pool, base, base_dir, recipe
        self.scored: list[Scored] = []
        self.decision: Decision | None = None
        # Query-only runs score candidates against the stored vectors (set by start/restore).
        self.stored: tuple[Backend, str] | None = None

    @classmethod
    def start(cls, config: TrainConfig, backend: Backend, split: DevSplit, recipe: VectorRecipe) -> Guard:
        """Fix the dev candidates from the index as it is and score the base on them."""
        from hybrid.query_encoder import encoder_for_index

        queries = encoder_for_index(backend, config.index, batch=True)
        pool = build_dev_pool(backend, config.index, split, config.guard_depth, queries.encode_queries)
        (config.out / DEV_DIR).mkdir(parents=True, exist_ok=True)
        pool.save(config.out / DEV_DIR / POOL_FILE)
        attach_documents(pool, backend, config.index)
        figures = base_scores(pool, backend, config.index, queries.encode_queries)
        base = Scored("base", None, float(figures.mean()), figures.tolist())
        log.info(
            "guard: %d dev queries, %d dev documents, base nDCG@10 %.4f", len(pool.qids), len(pool.documents), base.ndcg
        )
        query_only = config.update == "query"
        guard = cls(split, pool, base, recipe.query_model_dir() if query_only else recipe.model_dir(), recipe)
        guard.stored = (backend, config.index) if query_only else None
        return guard

    @classmethod
    def restore(cls, config: TrainConfig, backend: Backend, state: dict[str, Any]) -> Guard:
        """The guard a checkpoint saved (see :meth:`state`)."""
        split = DevSplit.from_dict(state["split"])
        assert split is not None  # saved with the state
        pool = DevPool.load(config.out / DEV_DIR / POOL_FILE)
        attach_documents(pool, backend, config.index)
        recipe = VectorRecipe.from_dict(state["recipe"])
        assert recipe is not None
        guard = cls(split, pool, Scored(**state["base"]), Path(state["base_dir"]), recipe)
        guard.scored = [Scored(**s) for s in state.get("scored", [])]
        if state.get("decision"):
            guard.decision = Decision(**state["decision"])
        guard.stored = (backend, config.index) if config.update == "query" else None
        return guard

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the guard."""
        return {
            "split": self.split.to_dict(),
            "base": self.base.__dict__,
            "base_dir": str(self.base_dir),
            "recipe": self.recipe.to_dict(),
            "scored": [s.__dict__ for s in self.scored],
            "decision": self.decision.__dict__ if self.decision else None,
        }

    def score(
        self, name: str, model_dir: Path, device: torch.device, step: int | None = None, alpha: float | None = None
    ) -> Scored:
        """Dev nDCG@10 of the model in ``model_dir``, embedded with the index's settings."""
        for seen in self.scored:
            if seen.name == name and seen.path == str(model_dir):
                return seen
        encoder = recipe_encoder(model_dir, self.recipe, device)
        if self.stored is not None:
            figures = query_model_scores(self.pool, encoder, *self.stored)
        else:
            figures = model_scores(self.pool, encoder)
        del encoder
        scored = Scored(name, str(model_dir), float(figures.mean()), figures.tolist(), alpha=alpha, step=step)
        self.scored.append(scored)
        log.info("guard: %s dev nDCG@10 %.4f (base %.4f)", name, scored.ndcg, self.base.ndcg)
        return scored

    def allows_refresh(self, checkpoint: Path, step: int, device: torch.device) -> bool:
        """A refresh during training swaps in only a model not worse than the base on dev."""
        return self.score(checkpoint.name, checkpoint, device, step=step, alpha=1.0).ndcg >= self.base.ndcg

    def protected(self) -> set[Path]:
        """Checkpoints the guard may still choose (the best scored so far)."""
        trained = [s for s in self.scored if s.alpha == 1.0 and s.path]
        return {Path(max(trained, key=lambda s: s.ndcg).path)} if trained else set()  # type: ignore[arg-type]

    def choose(self, config: TrainConfig, final: Path, step: int, device: torch.device) -> Decision:
        """Score the final model and base/trained interpolations; decide against the base."""
        self.score(final.name, final, device, step=step, alpha=1.0)
        trained = max((s for s in self.scored if s.alpha == 1.0), key=lambda s: s.ndcg)
        source = Path(trained.path)  # type: ignore[arg-type]
        by_alpha: dict[float, float] = {1.0: trained.ndcg}
        pending = [a for a in config.guard_config().alphas if a != 1.0]
        refined = False
        while pending:
            alpha = pending.pop(0)
            folder = config.out / CANDIDATES_DIR / f"alpha-{alpha:.2f}"
            interpolate(self.base_dir, source, alpha, folder, self.recipe.settings())
            by_alpha[alpha] = self.score(folder.name, folder, device, step=trained.step, alpha=alpha).ndcg
            if not pending and not refined:
                refined = True
                extra = next_alpha({0.0: self.base.ndcg, **by_alpha})
                if extra is not None and extra not in by_alpha:
                    pending.append(extra)
        candidates = [s for s in self.scored if s.alpha != 1.0 or s.path == str(source)]
        self.decision = decide(self.base, candidates, config.guard_p)
        self._write(config.out)
        return self.decision

    def _write(self, out: Path) -> None:
        assert self.decision is not None
        (out / "guard.json").write_text(json.dumps(self.decision.__dict__, indent=1) + "\n")

    def summary(self) -> dict[str, Any]:
        """Base and scored models' dev figures (for the run's result)."""
        return {
            "base": self.base.ndcg,
            "queries": len(self.base.per_query),
            "scored": [s.summary() for s in self.scored],
            "deltas": {s.name: round(float(np.mean(s.per_query)) - self.base.ndcg, 6) for s in self.scored},
        }


__all__ = ["Guard", "dev_split"]
