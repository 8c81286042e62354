"""A numpy-only query encoder for BERT-family models: cold start without torch.

Importing torch and transformers 5 costs ~3 s on a 2-core machine, more than a whole
command-line search should take. Queries are short, so a plain numpy forward pass of the
same weights (read from ``model.safetensors``) with the ``tokenizers`` library is fast and
gives the same vectors as :class:`hybrid.encoder.Encoder` to float32 precision (tested).
Models that are not plain BERT fall back to the torch encoder, and so do batch jobs
(eval, mine), where torch's batched matrix kernels win.

Queries of an index are encoded by the model that made its vectors, with the settings
it recorded (:mod:`hybrid.manifest`); another model is refused.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from hybrid.encoder import EncoderSettings, load_settings, resolve_model
from hybrid.manifest import VectorRecipe, check_model

if TYPE_CHECKING:
    from hybrid.backends.base import Backend


class QueryEncoder(Protocol):
    """What search needs from an encoder."""

    name: str
    dims: int

    @property
    def model_hash(self) -> str: ...

    def encode_queries(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray: ...


def supports_numpy(model_dir: Path) -> bool:
    """True for BERT models with a fast tokenizer file and safetensors weights."""
    try:
        cfg = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return (
        cfg.get("model_type") == "bert"
        and cfg.get("hidden_act", "gelu") == "gelu"
        and cfg.get("position_embedding_type", "absolute") == "absolute"
        and (model_dir / "tokenizer.json").is_file()
        and (model_dir / "model.safetensors").is_file()
    )


def index_recipe(backend: Backend, index: str) -> VectorRecipe | None:
    """The recipe of the current version of ``index`` (``None`` for pre-recipe indices)."""
    return VectorRecipe.from_dict(backend.info(index).recipe)


def open_query_encoder(
    model: str | None = None, *, recipe: VectorRecipe | None = None, batch: bool = False, index: str = "?"
) -> QueryEncoder:
    """A query encoder for vectors made per ``recipe``: its model unless ``model`` is given.

    A ``model`` whose weights differ from the recipe's is refused (ModelMismatchError).
    ``batch`` picks the torch encoder, fastest for many queries at once; otherwise the
    numpy one when the model allows it (no torch import: a fast cold start).
    """
    settings: EncoderSettings | None = None
    known_hash: str | None = None
    if recipe is not None:
        settings = recipe.settings()
        if model is None:
            model = str(recipe.model_dir())  # checks the weights are still the recorded ones
            known_hash = recipe.model_hash
    model_dir, name = resolve_model(model)
    encoder: QueryEncoder
    if not batch and supports_numpy(model_dir):
        encoder = NumpyBertQueryEncoder(model, settings, known_hash)
    else:
        from hybrid.encoder import Encoder, EncoderConfig

        encoder = Encoder(EncoderConfig(model=model, settings=settings, model_hash=known_hash))
    if recipe is not None:
        check_model(index, recipe, encoder.model_hash, name, "searching it")
    return encoder


def encoder_for_index(backend: Backend, index: str, model: str | None = None, batch: bool = False) -> QueryEncoder:
    """The query encoder for ``index``: its own model, or ``model`` if it is the same one."""
    info = backend.info(index)
    recipe = VectorRecipe.from_dict(info.recipe)
    if recipe is None:  # made before recipes were recorded: trust the stored model name
        return open_query_encoder(model or info.model, batch=batch)
    return open_query_encoder(model, recipe=recipe, batch=batch, index=index)


def check_encoder(backend: Backend, index: str, encoder: QueryEncoder, action: str = "searching it") -> None:
    """Refuse ``encoder`` for ``index`` unless it is the model that made the index's vectors."""
    check_model(index, index_recipe(backend, index), encoder.model_hash, encoder.name, action)


class NumpyBertQueryEncoder:
    """BERT forward pass in numpy (fp32), mean/cls pooling and normalisation as configured."""

    def __init__(
        self, model: str | None = None, settings: EncoderSettings | None = None, model_hash: str | None = None
    ) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        self.model_dir, self.name = resolve_model(model)
        self.root_dir = self.model_dir
        self._hash = model_hash
        if (self.model_dir / "query_encoder").is_dir():  # separate query tower of a checkpoint
            self.model_dir = self.model_dir / "query_encoder"
        self.settings = settings or load_settings(self.model_dir)
        self.cfg = json.loads((self.model_dir / "config.json").read_text())
        raw = load_file(str(self.model_dir / "model.safetensors"))
        self.w = {k.removeprefix("bert."): v.astype(np.float32) for k, v in raw.items()}
        self.dims = int(self.cfg["hidden_size"])
        self.heads = int(self.cfg["num_attention_heads"])
        self.eps = float(self.cfg.get("layer_norm_eps", 1e-12))
        self.tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=self.settings.query_max_length)
        pad_id = int(self.cfg.get("pad_token_id", 0))
        self.tokenizer.enable_padding(pad_id=pad_id, pad_token=self.tokenizer.id_to_token(pad_id) or "[PAD]")

    @property
    def model_hash(self) -> str:
        if self._hash is None:
            from hybrid.manifest import model_hash

            self._hash = model_hash(self.root_dir)
        return self._hash

    def encode_queries(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        size = batch_size or 32
        out = np.empty((len(texts), self.dims), dtype=np.float32)
        for start in range(0, len(texts), size):
            chunk = [self.settings.query_prefix + t for t in texts[start : start + size]]
            out[start : start + len(chunk)] = self._embed(chunk)
        return out

    def _embed(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in enc], dtype=np.int64)  # (batch, tokens)
        mask = np.array([e.attention_mask for e in enc], dtype=np.float32)
        types = np.array([e.type_ids for e in enc], dtype=np.int64)
        w = self.w
        x = w["embeddings.word_embeddings.weight"][ids]
        x = x + w["embeddings.position_embeddings.weight"][np.arange(ids.shape[1])][None]
        x = x + w["embeddings.token_type_embeddings.weight"][types]
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        bias = (1.0 - mask)[:, None, None, :] * np.finfo(np.float32).min  # (batch, 1, 1, tokens)
        for layer in range(int(self.cfg["num_hidden_layers"])):
            x = self._layer(x, bias, f"encoder.layer.{layer}.")
        return _pool(x, mask, self.settings)

    def _layer(self, x: np.ndarray, bias: np.ndarray, p: str) -> np.ndarray:
        w = self.w
        b, t, d = x.shape
        h, dh = self.heads, d // self.heads

        def proj(name: str) -> np.ndarray:  # (batch, heads, tokens, dh)
            y = x @ w[f"{p}attention.self.{name}.weight"].T + w[f"{p}attention.self.{name}.bias"]
            return y.reshape(b, t, h, dh).transpose(0, 2, 1, 3)

        q, k, v = proj("query"), proj("key"), proj("value")
        # (batch, heads, tokens, tokens); a Python float divisor keeps float32 under NumPy 2
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(dh) + bias
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        ctx = (scores / scores.sum(-1, keepdims=True)) @ v
        ctx = ctx.transpose(0, 2, 1, 3).reshape(b, t, d)
        attn = ctx @ w[f"{p}attention.output.dense.weight"].T + w[f"{p}attention.output.dense.bias"]
        x = _layer_norm(
            attn + x, w[f"{p}attention.output.LayerNorm.weight"], w[f"{p}attention.output.LayerNorm.bias"], self.eps
        )
        inner = _gelu(x @ w[f"{p}intermediate.dense.weight"].T + w[f"{p}intermediate.dense.bias"])
        out = inner @ w[f"{p}output.dense.weight"].T + w[f"{p}output.dense.bias"]
        return _layer_norm(out + x, w[f"{p}output.LayerNorm.weight"], w[f"{p}output.LayerNorm.bias"], self.eps)


def _layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, as BERT's ``gelu``; erf by Abramowitz-Stegun 7.1.26 (|err| < 1.5e-7)."""
    z = x / math.sqrt(2.0)  # np.sqrt would return float64 and upcast the array under NumPy 2
    s = np.sign(z)
    a = np.abs(z)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erf = s * (1.0 - poly * np.exp(-a * a))
    out: np.ndarray = 0.5 * x * (1.0 + erf)
    return out


def _pool(hidden: np.ndarray, mask: np.ndarray, settings: EncoderSettings) -> np.ndarray:
    if settings.pooling == "cls":
        vec = hidden[:, 0]
    else:
        weights = mask[:, :, None]
        vec = (hidden * weights).sum(1) / np.clip(weights.sum(1), 1e-9, None)
    if settings.normalize:
        vec = vec / np.clip(np.linalg.norm(vec, axis=-1, keepdims=True), 1e-12, None)
    result: np.ndarray = vec.astype(np.float32)
    return result


__all__ = [
    "NumpyBertQueryEncoder",
    "QueryEncoder",
    "check_encoder",
    "encoder_for_index",
    "index_recipe",
    "open_query_encoder",
    "supports_numpy",
]
