"""Training the query side only: stored vectors read back exactly, a query version applied
without re-embedding, and queries embedded by the query model the version names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hybrid.errors import ConfigError, ModelMismatchError
from hybrid.indexing import IndexJob, run_index
from hybrid.negatives import SamplerConfig
from hybrid.training.config import TrainConfig
from hybrid.training.query_side import QUERY_NOTE, stored_vectors
from hybrid.training.trainer import train


def _config(index: str, data: Path, out: Path, **kw: Any) -> TrainConfig:
    values: dict[str, Any] = {
        "index": index,
        "queries": data / "queries.jsonl",
        "qrels": data / "qrels/test.tsv",
        "out": out,
        "update": "query",
        "sampler": SamplerConfig(n=2, depth=10),
        "steps": 3,
        "batch_size": 2,
        "lr": 1e-3,
        "save_every": 0,
        "bm25_depth": 5,
        "knn_depth": 5,
        "guard": False,
    }
    values.update(kw)
    return TrainConfig(**values)


def test_stored_vectors_are_the_written_ones(
    backend_and_name: tuple[Any, str], tiny_encoder: Any, beir_small: Path
) -> None:
    backend, name = backend_and_name
    run_index(IndexJob(corpus=beir_small, index=name), backend, tiny_encoder)
    docs = [d for batch in backend.iter_documents(name) for d in batch]
    expected = tiny_encoder.encode_passages(docs)
    got = stored_vectors(backend, name, [d.id for d in docs], tiny_encoder.dims, chunk=5)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    with pytest.raises(ConfigError, match="not in index"):
        stored_vectors(backend, name, ["no-such-doc"], tiny_encoder.dims)


def test_query_only_training_applies_a_query_version_without_reembedding(
    backend_and_name: tuple[Any, str], tiny_encoder: Any, tiny_model: Path, beir_small: Path, tmp_path: Path
) -> None:
    from hybrid.query_encoder import encoder_for_index
    from hybrid.search import SearchConfig, Searcher

    backend, name = backend_and_name
    run_index(IndexJob(corpus=beir_small, index=name), backend, tiny_encoder)
    before = backend.info(name)
    result = train(_config(name, beir_small, tmp_path / "run"), backend)
    after = backend.info(name)
    assert after.version == before.version and after.count == before.count  # the same vectors, not a copy
    recipe = after.recipe
    assert recipe is not None and recipe["model_hash"] == before.recipe["model_hash"]  # type: ignore[index]
    kept = tmp_path / "run" / "models" / "checkpoint-0000003"
    assert recipe["query_version"] == 1 and recipe["query_model_path"] == str(kept.resolve())
    assert result.refreshes[0]["query_version"] == 1 and result.refreshes[0]["documents"] == 0
    encoder = encoder_for_index(backend, name)
    assert encoder.model_hash == recipe["query_model_hash"] != recipe["model_hash"]
    hits = Searcher(backend, name).search(["glucose"], SearchConfig(mode="hybrid", k=3))
    assert hits and hits[0]
    final = tmp_path / "run" / "checkpoint-0000003"
    assert (final / QUERY_NOTE).is_file() and not (final / "query_encoder").exists()
    # the passage model still fits these vectors; another model does not
    encoder_for_index(backend, name, model=str(tiny_encoder.model_dir))


def test_a_foreign_query_model_is_refused_naming_both_hashes(
    embedded_backend: Any, tiny_encoder: Any, other_model: Path, beir_small: Path, tmp_path: Path
) -> None:
    from hybrid.query_encoder import encoder_for_index

    run_index(IndexJob(corpus=beir_small, index="idx"), embedded_backend, tiny_encoder)
    with pytest.raises(ModelMismatchError, match="hash"):
        encoder_for_index(embedded_backend, "idx", model=str(other_model))
    with pytest.raises(ConfigError, match=r"neither the passage model \(hash"):
        train(_config("idx", beir_small, tmp_path / "run", model=str(other_model)), embedded_backend)


def test_query_only_refuses_refresh_options(beir_small: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nothing to refresh"):
        _config("idx", beir_small, tmp_path, refresh_every=2)
    with pytest.raises(ConfigError, match="do not apply"):
        _config("idx", beir_small, tmp_path, grad_cache_chunk=4)


def test_query_only_checkpoint_loads_in_sentence_transformers(
    embedded_backend: Any, tiny_encoder: Any, beir_small: Path, tmp_path: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    from hybrid.encoder import Encoder, EncoderConfig

    run_index(IndexJob(corpus=beir_small, index="idx"), embedded_backend, tiny_encoder)
    train(_config("idx", beir_small, tmp_path / "run", refresh_at_end=False), embedded_backend)
    final = tmp_path / "run" / "checkpoint-0000003"
    ours = Encoder(EncoderConfig(model=str(final))).encode_queries(["blood glucose levels"])
    theirs = SentenceTransformer(str(final), device="cpu").encode(["blood glucose levels"])
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert embedded_backend.info("idx").recipe.get("query_model_hash") is None  # not applied
