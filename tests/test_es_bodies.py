from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from hybrid.backends.base import version_name, version_number
from hybrid.backends.elastic import _json_serializer
from hybrid.backends.es_bodies import (
    bm25_body,
    encoded,
    es_similarity,
    knn_body,
    msearch_lines,
    render_index_body,
    similarity_from_es_score,
)
from hybrid.config import IndexSpec, LexicalSettings, VectorSettings
from hybrid.errors import ConfigError


def test_render_defaults() -> None:
    body = render_index_body(IndexSpec(name="docs", dims=384, model="m", normalized=True), {"model": "m"})
    index = body["settings"]["index"]
    assert index["refresh_interval"] == "-1"
    assert index["auto_expand_replicas"] == "0-1" and "number_of_replicas" not in index
    assert index["similarity"]["default"] == {"type": "BM25", "k1": 0.9, "b": 0.4}
    assert index["analysis"]["analyzer"]["hybrid_standard"] == {"type": "standard", "stopwords": "_english_"}
    props = body["mappings"]["properties"]
    assert props["vector"] == {
        "type": "dense_vector",
        "dims": 384,
        "index": True,
        "similarity": "dot_product",
        "index_options": {"type": "hnsw", "m": 16, "ef_construction": 100},
    }
    assert props["title"]["copy_to"] == "contents" and props["text"]["analyzer"] == "hybrid_standard"
    assert body["mappings"]["_meta"] == {"hybrid": {"model": "m", "template_version": 1}}
    assert body["mappings"]["_source"] == {"excludes": ["vector"]}


def test_render_options() -> None:
    spec = IndexSpec(
        name="docs",
        dims=768,
        model="m",
        normalized=False,
        lexical=LexicalSettings(k1=1.2, b=0.75, analyzer="english"),
        vectors=VectorSettings(es_type="int8_flat"),
        replicas=0,
        shards=2,
    )
    body = render_index_body(spec, {})
    index = body["settings"]["index"]
    assert "analysis" not in index
    assert index["similarity"]["default"]["k1"] == 1.2
    assert (index["number_of_replicas"], index["number_of_shards"]) == (0, 2)
    assert "auto_expand_replicas" not in index
    props = body["mappings"]["properties"]
    assert props["contents"]["analyzer"] == "english"
    assert props["vector"]["similarity"] == "max_inner_product"
    assert props["vector"]["index_options"] == {"type": "int8_flat"}


def test_query_bodies() -> None:
    assert bm25_body("q", 5) == {
        "query": {"match": {"contents": {"query": "q"}}},
        "size": 5,
        "_source": ["id", "title", "text"],
    }
    knn = knn_body([0.5, 0.25], 10, 50)["knn"]
    assert knn == {"field": "vector", "query_vector": [0.5, 0.25], "k": 10, "num_candidates": 50}
    assert knn_body([1.0], 200, 50)["knn"]["num_candidates"] == 200
    assert msearch_lines("i", [{"a": 1}, {"b": 2}]) == [{"index": "i"}, {"a": 1}, {"index": "i"}, {"b": 2}]
    # ids and scores only: the id from the keyword's doc values, not the stored _id
    ids_only = {"_source": False, "stored_fields": "_none_", "docvalue_fields": ["id"]}
    assert {k: bm25_body("q", 5, source=(), id_field="id")[k] for k in ids_only} == ids_only
    assert {k: knn_body([1.0], 5, 5, source=(), id_field="id")[k] for k in ids_only} == ids_only
    # an index adopted in place has no such field; with texts asked for, _source as before
    assert "docvalue_fields" not in knn_body([1.0], 5, 5, source=(), id_field=None)
    assert bm25_body("q", 5, id_field="id")["_source"] == ["id", "title", "text"]


@pytest.mark.parametrize("sim", [0.8, 0.0, -0.6])
def test_es_score_transform_is_undone(sim: float) -> None:
    assert similarity_from_es_score((1 + sim) / 2, "dot_product") == pytest.approx(sim)
    es_mip = sim + 1 if sim >= 0 else 1 / (1 - sim)
    assert similarity_from_es_score(es_mip, "max_inner_product") == pytest.approx(sim)
    assert es_similarity(True) == "dot_product"


def test_version_names_and_index_names() -> None:
    assert version_name("docs", 3) == "docs-v000003"
    assert version_number("docs", "docs-v000003") == 3
    assert version_number("docs", "docs-x-v000003") is None
    assert version_number("docs", "docs-v3") is None
    with pytest.raises(ConfigError, match="invalid index name 'Docs'"):
        IndexSpec(name="Docs", dims=3, model="m", normalized=True)


@pytest.mark.es
def test_a_new_index_is_green_on_one_node(es_backend: object, es_prefix: str, tiny_encoder: object) -> None:
    """A single node holds no replica: hybrid's indices expand replicas 0-1, so they are green
    there (and keep one replica on a cluster) instead of yellow for ever."""
    from pathlib import Path

    from hybrid.indexing import IndexJob, run_index
    from tests.conftest import FIXTURES

    backend: Any = es_backend
    name = f"{es_prefix}-green"
    run_index(IndexJob(corpus=Path(FIXTURES / "beir-small"), index=name), backend, tiny_encoder)  # type: ignore[arg-type]
    physical = backend.current(name)
    settings = backend.client.indices.get_settings(index=physical)[physical]["settings"]["index"]
    assert settings["auto_expand_replicas"] == "0-1"
    health = backend.client.cluster.health(index=physical, wait_for_status="green", timeout="20s")
    assert health["status"] == "green" and not health["timed_out"]


def test_lines_are_encoded_as_the_standard_library_reads_them() -> None:
    """orjson writes the multi-search lines: a float32 query vector reaches the cluster as the
    same float64 values the standard library would write, and a line orjson refuses (a lone
    surrogate, a numpy scalar) is written by the client's serializer; responses read the
    same either way, long integers and lone surrogate escapes included."""
    from elasticsearch.serializer import JsonSerializer

    vector = np.random.default_rng(0).standard_normal(384).astype(np.float32)
    body = knn_body(vector, 10, 100, source=(), id_field="id")
    lines = msearch_lines("idx", [body, bm25_body("tides \ud800", 5)])
    out = encoded(lines)
    assert [json.loads(line) for line in out] == json.loads(json.dumps(lines))
    assert json.loads(out[1])["knn"]["query_vector"] == [float(x) for x in vector]
    assert out[3] == JsonSerializer().dumps(lines[3])  # the lone surrogate, as the client writes it
    assert encoded([{"k": np.int64(5)}]) == [b'{"k":5}']
    serializer = _json_serializer()
    assert serializer.loads(b'{"s": 0.1, "n": [1, 2]}') == {"s": 0.1, "n": [1, 2]}
    assert serializer.loads(b'{"t": "a\\ud800"}') == {"t": "a\ud800"}  # orjson refuses it; json reads it
    assert serializer.loads(b'{"id": 123456789012345678901234}') == {"id": 123456789012345678901234}
