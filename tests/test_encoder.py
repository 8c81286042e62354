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
