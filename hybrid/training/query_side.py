"""Training the query side only: the index's vectors stay as they are, no passage is re-embedded.

The passage side of every step is read from the index: its stored vectors, recovered
exactly through the backend's own scoring (the similarity of each basis vector e_j with a
document is its j-th component, on every backend and license tier, whether or not the
vectors are kept in ``_source``). Only queries run through the model. Applying the trained
query model is a metadata update of the same version (a *query version*): searches, mining,
evaluation and serving then embed queries with it; the vectors never move.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hybrid.backends.base import Backend
from hybrid.errors import ConfigError
from hybrid.manifest import VectorRecipe

log = logging.getLogger(__name__)

QUERY_NOTE = "QUERY_MODEL.md"
_NOTE = """# A query encoder

This model embeds **queries** for the index version it was trained against (hybrid train
--update query); passages stay embedded by {passage} (hash {passage_hash}). Load it with
sentence-transformers as usual, but use it for queries only: its vectors match that passage
model's, not its own passage embeddings.
"""


def stored_vectors(backend: Backend, index: str, ids: Sequence[str], dims: int, chunk: int = 512) -> np.ndarray:
    """``(len(ids), dims)`` float32: the vectors the index stores for ``ids``, in order.

    Raises:
        ConfigError: an id is not in the index.
    """
    out = np.zeros((len(ids), dims), dtype=np.float32)
    basis = np.eye(dims, dtype=np.float32)
    for start in range(0, len(ids), chunk):
        part = list(ids[start : start + chunk])
        scored = backend.score(index, basis, [part] * dims)  # one row of components per basis vector
        for j, row in enumerate(scored):
            missing = [d for d in part if d not in row]
            if missing:
                raise ConfigError(
                    f"{len(missing)} documents are not in index '{index}' (e.g. {missing[0]}); "
                    "mine the pools again against this index (--remine)"
                )
            out[start : start + len(part), j] = [row[d] for d in part]
    return out


class PassageVectors:
    """Stored vectors by id for training batches, with a bounded cache (pools repeat documents)."""

    def __init__(self, backend: Backend, index: str, dims: int, capacity: int = 100_000) -> None:
        self.backend, self.index, self.dims, self.capacity = backend, index, dims, capacity
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def get(self, ids: Sequence[str]) -> np.ndarray:
        wanted = [d for d in dict.fromkeys(ids) if d not in self._cache]
        if wanted:
            for doc, vector in zip(wanted, stored_vectors(self.backend, self.index, wanted, self.dims), strict=True):
                self._cache[doc] = vector
        rows = []
        for doc in ids:
            self._cache.move_to_end(doc)
            rows.append(self._cache[doc])
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return np.stack(rows) if rows else np.zeros((0, self.dims), dtype=np.float32)


def write_note(model_dir: Path, recipe: VectorRecipe) -> None:
    """Say beside a query-only checkpoint what it is for."""
    (model_dir / QUERY_NOTE).write_text(_NOTE.format(passage=recipe.model, passage_hash=recipe.model_hash))


def apply_query_model(backend: Backend, index: str, model_dir: Path, name: str) -> VectorRecipe:
    """Make ``model_dir`` the query model of ``index``'s current vectors: a new query version."""
    info = backend.info(index)
    recipe = VectorRecipe.from_dict(info.recipe)
    if recipe is None:
        raise ConfigError(f"index '{index}' records no recipe; rebuild it with hybrid index CORPUS --recreate")
    new = recipe.with_query_model(name, model_dir)
    backend.set_query_model(index, new)
    log.info("%s: queries now embedded by %s (query version %d)", index, model_dir, new.query_version)
    return new


def check_query_only(recipe: VectorRecipe, model_hash_: str, model: str, index: str) -> None:
    """A query model trained against other vectors is refused, naming both hashes."""
    if model_hash_ not in (recipe.model_hash, recipe.query_hash):
        raise ConfigError(
            f"{model} (hash {model_hash_}) is neither the passage model (hash {recipe.model_hash}) nor the query "
            f"model (hash {recipe.query_hash}) of index '{index}'; query-only training starts from the index's "
            "own query side: leave out --model"
        )


__all__ = ["PassageVectors", "apply_query_model", "check_query_only", "stored_vectors", "write_note"]
