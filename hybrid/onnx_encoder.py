"""Query encoding through ONNX Runtime: one fast encoder for every model hybrid can train.

The query tower of a model (any architecture ``transformers.AutoModel`` loads: BERT,
MPNet, XLM-R, …) is exported once to ONNX with torch's exporter and cached, keyed by the
model's weights hash (:func:`hybrid.manifest.model_hash`): beside the model in
``.hybrid-onnx/`` when that directory is writable, else in ``~/.cache/hybrid/onnx``. Later
processes load the cached graph with onnxruntime and the ``tokenizers`` library only, so
a command-line search starts without importing torch. Pooling and normalisation follow
the model's :class:`~hybrid.encoder.EncoderSettings`; vectors equal the torch encoder's to
float32 precision (tested).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hybrid.encoder import EncoderSettings, load_settings, resolve_model
from hybrid.errors import ModelError

log = logging.getLogger(__name__)

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
EXPORT_VERSION = 1  # bump when the exported graph changes


class Unsupported(Exception):
    """This model cannot be encoded through ONNX here; the torch encoder serves it."""


def available() -> bool:
    """True when onnxruntime can be imported."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def cache_path(root_dir: Path, tower: Path, digest: str) -> Path:
    """Where the graph of ``tower`` (the model at ``root_dir``, hash ``digest``) is cached."""
    name = f"query-{digest}-{'tower' if tower != root_dir else 'shared'}-v{EXPORT_VERSION}.onnx"
    beside = root_dir / ".hybrid-onnx"
    try:
        beside.mkdir(exist_ok=True)
        probe = beside / f".probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
        return beside / name
    except OSError:
        fallback = Path.home() / ".cache" / "hybrid" / "onnx"
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback / name


def export(tower: Path, target: Path, max_length: int) -> None:
    """Export in a fresh process: torch.export's tracing state left by other exports (or any
    torch work) in a long-lived process made it fail spuriously."""
    import subprocess
    import sys

    code = "import sys; from pathlib import Path; from hybrid.onnx_encoder import export_here as e; "
    code += "e(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))"
    done = subprocess.run(
        [sys.executable, "-c", code, str(tower), str(target), str(max_length)], capture_output=True, text=True
    )
    if done.returncode != 0 or not target.is_file():
        raise RuntimeError(f"could not export {tower} to ONNX: {done.stderr.strip().splitlines()[-1:]}")


def export_here(tower: Path, target: Path, max_length: int) -> None:
    """Export the transformer at ``tower`` (last hidden state) to ``target``, atomically."""
    import torch
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    config = AutoConfig.from_pretrained(str(tower), local_files_only=True)
    model = AutoModel.from_pretrained(str(tower), local_files_only=True, attn_implementation="eager").eval()
    accepts = set(inspect.signature(model.forward).parameters)
    types = int(getattr(config, "type_vocab_size", 0) or 0)
    names = [n for n in INPUTS if n in accepts and (n != "token_type_ids" or types > 0)]

    class LastHidden(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            return self.inner(**{n: given[n] for n in names}).last_hidden_state

    batch, length = 2, 8
    example = {
        "input_ids": torch.randint(5, int(config.vocab_size), (batch, length)),
        "attention_mask": torch.ones(batch, length, dtype=torch.long),
        "token_type_ids": torch.zeros(batch, length, dtype=torch.long),
    }
    example["attention_mask"][1, length // 2 :] = 0  # so padding is traced as data, not a constant
    b = torch.export.Dim("batch")
    t = torch.export.Dim("tokens", max=max(length, max_length))
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the exporter's notes (e.g. "torchvision is not installed") are noise here
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            program = _export_once(torch, LastHidden(model), example, names, b, t)
            if program is None:
                raise ModelError(f"torch could not export {tower} to ONNX")
            program.save(str(tmp), external_data=False)
    finally:
        quiet.setLevel(level)
    os.replace(tmp, target)


def _export_once(torch: Any, module: Any, example: dict[str, Any], names: list[str], b: Any, t: Any) -> Any:
    """torch.onnx.export with fresh tracing state, tried twice: state left by an earlier export
    in the same process (symbolic shapes) can make torch.export fail spuriously."""
    for attempt in (1, 2):
        torch._dynamo.reset()
        try:
            return torch.onnx.export(
                module,
                tuple(example[n] for n in names),
                input_names=names,
                output_names=["last_hidden_state"],
                dynamic_shapes={n: {0: b, 1: t} for n in names},
                dynamo=True,
                optimize=True,
                verbose=False,
            )
        except Exception:
            if attempt == 2:
                raise
    return None


class OnnxQueryEncoder:
    """Queries -> vectors with onnxruntime; the graph is exported on first use (needs torch once)."""

    def __init__(
        self,
        model: str | None = None,
        settings: EncoderSettings | None = None,
        model_hash: str | None = None,
        threads: int | None = None,
        spin: bool = True,
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.root_dir, self.name = resolve_model(model)
        self.model_dir = self.root_dir
        if (self.root_dir / "query_encoder").is_dir():  # separate query tower of a checkpoint
            self.model_dir = self.root_dir / "query_encoder"
        self._hash = model_hash
        self.settings = settings or load_settings(self.model_dir)
        cfg = json.loads((self.model_dir / "config.json").read_text())
        self.dims = int(cfg["hidden_size"])
        tokenizer_file = self.model_dir / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise Unsupported(f"{self.model_dir} has no tokenizer.json (a fast tokenizer)")
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.enable_truncation(max_length=self.settings.query_max_length)
        padding = self.tokenizer.padding or {}
        pad_id = int(padding.get("pad_id", cfg.get("pad_token_id") or 0))
        pad_token = padding.get("pad_token") or self.tokenizer.id_to_token(pad_id) or "[PAD]"
        self.tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)  # to the longest in each batch
        path = cache_path(self.root_dir, self.model_dir, self.model_hash)
        if not path.is_file():
            log.info("exporting the query encoder of %s to %s (once)", self.name, path)
            limit = int(cfg.get("max_position_embeddings", 512)) - 2
            export(self.model_dir, path, min(self.settings.query_max_length, limit))
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        if threads:
            options.intra_op_num_threads = threads
        if not spin:  # idle threads sleep instead of busy-waiting for the next call's work
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.inputs = [i.name for i in self.session.get_inputs()]

    @property
    def model_hash(self) -> str:
        if self._hash is None:
            from hybrid.manifest import model_hash

            self._hash = model_hash(self.root_dir)
        return self._hash

    def encode_queries(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        size = batch_size or 64
        out = np.empty((len(texts), self.dims), dtype=np.float32)
        # sorted by length so batches hold queries of similar length (less padding)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), size):
            rows = order[start : start + size]
            out[rows] = self._embed([self.settings.query_prefix + texts[i] for i in rows])
        return out

    def _embed(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer.encode_batch(texts)
        feeds = {
            "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
        }
        hidden = self.session.run(None, {n: feeds[n] for n in self.inputs})[0]
        return pool(hidden, feeds["attention_mask"].astype(np.float32), self.settings)


def pool(hidden: np.ndarray, mask: np.ndarray, settings: EncoderSettings) -> np.ndarray:
    """Mean or CLS pooling, then L2 normalisation when the model is normalised; float32."""
    if settings.pooling == "cls":
        vec = hidden[:, 0]
    else:
        weights = mask[:, :, None]
        vec = (hidden * weights).sum(1) / np.clip(weights.sum(1), 1e-9, None)
    if settings.normalize:
        vec = vec / np.clip(np.linalg.norm(vec, axis=-1, keepdims=True), 1e-12, None)
    result: np.ndarray = vec.astype(np.float32)
    return result
