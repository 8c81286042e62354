"""Query encoders: queries of an index are encoded by the model that made its vectors.

Every query path (search, serve, eval, mine) encodes with ONNX Runtime
(:mod:`hybrid.onnx_encoder`): any architecture transformers can load, float32, batched, and
without importing torch once the graph is cached, so a cold command-line search stays
fast. Batch jobs on a CUDA machine use the torch encoder on the GPU; a model the exporter
cannot handle falls back to torch with a warning. The settings come from the index's
recipe (:mod:`hybrid.manifest`); another model than the recipe's is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from hybrid import onnx_encoder
from hybrid.encoder import EncoderSettings, resolve_model
from hybrid.errors import ModelError
from hybrid.manifest import VectorRecipe, check_query_model

if TYPE_CHECKING:
    from hybrid.backends.base import Backend

log = logging.getLogger(__name__)


class QueryEncoder(Protocol):
    """What search needs from an encoder."""

    name: str
    dims: int

    @property
    def model_hash(self) -> str: ...

    def encode_queries(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray: ...


def index_recipe(backend: Backend, index: str) -> VectorRecipe | None:
    """The recipe of the current version of ``index`` (``None`` for pre-recipe indices)."""
    return VectorRecipe.from_dict(backend.info(index).recipe)


def open_query_encoder(
    model: str | None = None,
    *,
    recipe: VectorRecipe | None = None,
    batch: bool = False,
    index: str = "?",
    spin: bool = True,
) -> QueryEncoder:
    """A query encoder for vectors made per ``recipe``: its model unless ``model`` is given.

    A ``model`` whose weights differ from the recipe's is refused (ModelMismatchError).
    ``batch`` (many queries per call) uses torch on a GPU when there is one. ``spin`` False:
    ONNX Runtime's idle threads sleep rather than busy-wait between calls (a server, whose
    event loop needs the cores between batches).
    """
    settings: EncoderSettings | None = None
    known_hash: str | None = None
    if recipe is not None:
        settings = recipe.settings()
        if model is None:
            model = str(recipe.query_model_dir())  # checks the weights are still the recorded ones
            known_hash = recipe.query_hash
    _, name = resolve_model(model)
    encoder: QueryEncoder | None = None
    if onnx_encoder.available() and not (batch and _cuda()):
        try:
            encoder = onnx_encoder.OnnxQueryEncoder(model, settings, known_hash, spin=spin)
        except onnx_encoder.Unsupported as exc:
            log.info("%s; encoding queries with torch", exc)
        except ModelError:
            raise
        except Exception as exc:  # an architecture the exporter cannot handle: torch serves it
            log.warning("ONNX query encoding is not available for %s (%s); using torch", name, exc)
    if encoder is None:
        from hybrid.encoder import Encoder, EncoderConfig

        encoder = Encoder(EncoderConfig(model=model, settings=settings, model_hash=known_hash))
    if recipe is not None:
        check_query_model(index, recipe, encoder.model_hash, name, "searching it")
    return encoder


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def encoder_for_index(backend: Backend, index: str, model: str | None = None, batch: bool = False) -> QueryEncoder:
    """The query encoder for ``index``: its own model, or ``model`` if it is the same one."""
    info = backend.info(index)
    recipe = VectorRecipe.from_dict(info.recipe)
    if recipe is None:  # made before recipes were recorded: trust the stored model name
        return open_query_encoder(model or info.model, batch=batch)
    return open_query_encoder(model, recipe=recipe, batch=batch, index=index)


def check_encoder(backend: Backend, index: str, encoder: QueryEncoder, action: str = "searching it") -> None:
    """Refuse ``encoder`` for ``index`` unless it is the model that made the index's vectors."""
    check_query_model(index, index_recipe(backend, index), encoder.model_hash, encoder.name, action)


__all__ = [
    "QueryEncoder",
    "check_encoder",
    "encoder_for_index",
    "index_recipe",
    "open_query_encoder",
]
