from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hybrid.encoder import (
    DEFAULT_MODEL_NAME,
    Encoder,
    EncoderConfig,
    EncoderSettings,
    default_model_dir,
    load_settings,
    passage_text,
)
from hybrid.errors import ModelError
from hybrid.types import Document


def test_shipped_model_settings_come_from_sentence_transformers_layout() -> None:
    settings = load_settings(default_model_dir())
    assert settings == EncoderSettings(pooling="mean", normalize=True, passage_max_length=256)
    assert settings.similarity == "cosine"


def test_own_settings_file_wins(tiny_model: Path) -> None:
    assert load_settings(tiny_model).query_max_length == 32
    assert json.loads((tiny_model / "hybrid_encoder.json").read_text())["pooling"] == "mean"


def test_vectors_are_normalised_and_independent_of_batching(tiny_encoder: Any) -> None:
    texts = ["short", "a much longer passage about solar panels and electricity", "mid length text"]
    together = tiny_encoder.encode_queries(texts)
    alone = np.vstack([tiny_encoder.encode_queries([t]) for t in texts])
    assert together.shape == (3, 32) and together.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_passage_text_joins_title() -> None:
    assert passage_text(Document(id="1", text="body", title="Head")) == "Head body"
    assert passage_text(Document(id="1", text="body")) == "body"


def test_shipped_minilm_gives_meaningful_vectors() -> None:
    enc = Encoder(EncoderConfig(batch_size=4))
    assert (enc.name, enc.dims) == (DEFAULT_MODEL_NAME, 384)
    q = enc.encode_queries(["how do plants make sugar from sunlight"])
    docs = [
        Document(id="a", text="Photosynthesis turns light, water and CO2 into glucose."),
        Document(id="b", text="The stock market closed lower on Friday."),
    ]
    p = enc.encode_passages(docs)
    scores = (q @ p.T)[0]
    assert scores[0] > scores[1] + 0.2


def test_missing_model_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="is not a local Hugging Face model directory"):
        Encoder(EncoderConfig(model=str(tmp_path)))


QUERIES = ["how do solar panels work", "What is the effect of statins on LDL cholesterol in elderly patients?", "a"]


def _random_model(kind: str, tiny_model: Path, out: Path) -> Path:
    """A small random MPNet or XLM-R (built here: nothing is downloaded) with MiniLM's tokenizer."""
    import torch
    from transformers import AutoTokenizer, MPNetConfig, MPNetModel, XLMRobertaConfig, XLMRobertaModel

    from hybrid.encoder import save_settings

    torch.manual_seed(0)
    sizes = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    model: Any
    if kind == "mpnet":
        model = MPNetModel(MPNetConfig(vocab_size=30527, max_position_embeddings=130, **sizes))
    else:
        model = XLMRobertaModel(XLMRobertaConfig(vocab_size=30522, max_position_embeddings=130, **sizes))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(tiny_model), local_files_only=True).save_pretrained(out)
    save_settings(out, EncoderSettings(pooling="mean", normalize=True, query_max_length=32, passage_max_length=64))
    return out


@pytest.mark.parametrize("kind", ["bert", "mpnet", "xlm-roberta"])
def test_onnx_query_encoder_equals_torch(kind: str, tiny_model: Path, tmp_path: Path) -> None:
    from hybrid.onnx_encoder import OnnxQueryEncoder

    model = tiny_model if kind == "bert" else _random_model(kind, tiny_model, tmp_path / kind)
    fast = OnnxQueryEncoder(str(model))
    reference = Encoder(EncoderConfig(model=str(model))).encode_queries(QUERIES)
    np.testing.assert_allclose(fast.encode_queries(QUERIES), reference, atol=1e-5)
    again = OnnxQueryEncoder(str(model))  # from the cached graph, keyed by the weights hash
    np.testing.assert_allclose(again.encode_queries(QUERIES[::-1]), reference[::-1], atol=1e-5)
    assert fast.model_hash == again.model_hash


def test_onnx_query_encoder_equals_torch_on_minilm() -> None:
    from hybrid.onnx_encoder import OnnxQueryEncoder
    from hybrid.query_encoder import open_query_encoder

    fast = open_query_encoder(None)
    assert isinstance(fast, OnnxQueryEncoder) and fast.dims == 384
    np.testing.assert_allclose(fast.encode_queries(QUERIES), Encoder().encode_queries(QUERIES), atol=1e-5)


def test_the_servers_encoder_does_not_busy_wait(tiny_model: Path) -> None:
    """The server's encoder threads sleep between batches (the event loop needs the cores);
    other commands keep ONNX Runtime's default, which encodes a long run of batches faster.
    Both give the same vectors."""
    from hybrid.onnx_encoder import OnnxQueryEncoder
    from hybrid.serving.engine import server_encoder

    key = "session.intra_op.allow_spinning"
    served = server_encoder(None, str(tiny_model))
    plain = OnnxQueryEncoder(str(tiny_model))
    assert isinstance(served, OnnxQueryEncoder)
    assert served.session.get_session_options().get_session_config_entry(key) == "0"
    with pytest.raises(RuntimeError, match="does not have configuration"):  # unset: the default
        plain.session.get_session_options().get_session_config_entry(key)
    np.testing.assert_allclose(served.encode_queries(QUERIES), plain.encode_queries(QUERIES), atol=1e-6)


def test_models_without_a_fast_tokenizer_fall_back_to_torch(tmp_path: Path, tiny_model: Path) -> None:
    import shutil

    from hybrid.query_encoder import open_query_encoder

    other = shutil.copytree(tiny_model, tmp_path / "other")
    (other / "tokenizer.json").unlink()
    encoder = open_query_encoder(str(other))
    assert isinstance(encoder, Encoder)
    vectors = encoder.encode_queries(QUERIES)
    assert vectors.shape == (3, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_queries_default_to_the_models_limit() -> None:
    """A sentence-transformers model embeds queries up to its own max_seq_length (ArguAna's
    long queries lost most of their text to a 64-token cap)."""
    from hybrid.encoder import default_model_dir

    settings = load_settings(default_model_dir())
    assert settings.query_max_length == settings.passage_max_length == 256
    assert EncoderSettings().query_max_length == EncoderSettings().passage_max_length
