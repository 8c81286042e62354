"""Shared fixtures: a tiny random BERT (fast), the fixture corpora, and a real ES node.

ES tests never skip: without HYBRID_TEST_ES_URL the session starts a real node itself
(tests/es_node.py); if that fails, every ES test fails with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import es_node

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-d random BERT with all-MiniLM-L6-v2's tokenizer, saved locally."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from hybrid.encoder import EncoderSettings, default_model_dir, save_settings

    out = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(str(default_model_dir()), local_files_only=True).save_pretrained(out)
    save_settings(out, EncoderSettings(pooling="mean", normalize=True, query_max_length=32, passage_max_length=64))
    return out


@pytest.fixture(scope="session")
def other_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT with perturbed weights: same shape and dimension, another model."""
    import torch
    from transformers import BertModel

    out = tmp_path_factory.mktemp("tiny-bert-other")
    shutil.copytree(tiny_model, out, dirs_exist_ok=True)
    model = BertModel.from_pretrained(str(tiny_model), local_files_only=True)
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.02 * torch.randn_like(param))
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_encoder(tiny_model: Path) -> Any:
    from hybrid.encoder import Encoder, EncoderConfig

    return Encoder(EncoderConfig(model=str(tiny_model), batch_size=8))


@pytest.fixture(scope="session")
def beir_small() -> Path:
    return FIXTURES / "beir-small"


@pytest.fixture(scope="session")
def es_url() -> Iterator[str]:
    """URL of a real Elasticsearch node: HYBRID_TEST_ES_URL, else one started for the session."""
    url = os.environ.get("HYBRID_TEST_ES_URL")
    if url:
        yield url
        return
    version = os.environ.get("HYBRID_TEST_ES_VERSION", es_node.ES9)
    try:
        state = es_node.start(version)
    except Exception as exc:
        pytest.fail(f"could not start Elasticsearch {version} for the ES tests: {exc}")
    try:
        yield str(state["url"])
    finally:
        es_node.stop(state)


@pytest.fixture
def es_prefix() -> str:
    """A unique index-name prefix for one test."""
    return f"hyt-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def es_backend(es_url: str, es_prefix: str) -> Iterator[Any]:
    """ElasticBackend on the real node; deletes only this test's indices afterwards."""
    from hybrid.backends.elastic import ElasticBackend
    from hybrid.config import ElasticConfig

    backend = ElasticBackend(ElasticConfig(url=es_url, request_timeout=60))
    try:
        yield backend
    finally:
        backend.client.indices.delete(index=f"{es_prefix}*", allow_no_indices=True, expand_wildcards="all")
        backend.close()


@pytest.fixture
def embedded_backend(tmp_path: Path) -> Iterator[Any]:
    from hybrid.backends.embedded import EmbeddedBackend

    backend = EmbeddedBackend(tmp_path / "store")
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture(params=["embedded", pytest.param("es", marks=pytest.mark.es)])
def backend_and_name(request: pytest.FixtureRequest, es_prefix: str) -> tuple[Any, str]:
    """Each behaviour test runs on both backends with a fresh index name."""
    if request.param == "es":
        return request.getfixturevalue("es_backend"), f"{es_prefix}-idx"
    return request.getfixturevalue("embedded_backend"), "idx"


def copy_fixture(name: str, dest: Path) -> Path:
    """Copy a fixture file or directory into ``dest`` (tests may modify the copy)."""
    src = FIXTURES / name
    target = dest / name
    if src.is_dir():
        shutil.copytree(src, target)
    else:
        shutil.copy(src, target)
    return target


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
