"""Shared fixtures: a tiny random BERT (fast), the fixture corpora, and a real ES node.

ES tests never skip: without HYBRID_TEST_ES_URL the session starts a real node itself
(tests/es_node.py); if that fails, every ES test fails with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import es_node

FIXTURES = Path(__file__).parent / "fixtures"


def pytest_configure(config: pytest.Config) -> None:
    # here, not in pyproject.toml: CI keys its cached virtualenv on that file
    config.addinivalue_line("markers", "cluster: starts its own 3-node Elasticsearch cluster (tests/es_node.py)")
    config.addinivalue_line("markers", "kills: SIGKILLs hybrid's own processes at seeded random moments")
    # Writers delete a swapped-out version at once in tests (the CLI keeps it 120 s by default,
    # and waits for the deletion before exiting); tests of the grace itself pass --grace.
    os.environ.setdefault("HYBRID_GRACE", "0")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-d random BERT with all-MiniLM-L6-v2's tokenizer, saved locally."""
    from tests.models import tiny_bert

    return tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


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
    for state in es_running(f"Elasticsearch {version} for the ES tests", lambda: es_node.start(version)):
        yield str(state["url"])


def es_running(what: str, start: Callable[[], dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """For a fixture: nodes started by ``start`` (the tests needing them fail with the reason
    when they do not start; they never skip), stopped afterwards."""
    try:
        state = start()
    except Exception as exc:
        pytest.fail(f"could not start {what}: {exc}")
    try:
        yield state
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


SYNTHETIC_WORDS = [f"w{i}" for i in range(400)] + ["ocean", "tide", "moon", "bread", "yeast", "solar", "panel", "bee"]


def synthetic_corpus(path: Path, docs: int, seed: int = 0) -> Path:
    """A jsonl corpus of ``docs`` seeded random documents (ids ``d00000``...)."""
    import random

    rng = random.Random(seed)
    rows = [
        {"_id": f"d{i:05d}", "title": f"doc {i}", "text": " ".join(rng.choices(SYNTHETIC_WORDS, k=rng.randint(8, 40)))}
        for i in range(docs)
    ]
    return write_jsonl(path, rows)


def same_index(backend: Any, index: str, reference: str, encoder: Any, expected: int) -> None:
    """``index`` holds ``reference``'s documents, ``expected`` of them with no duplicate ids,
    and the same vectors (exact similarities to a few probe queries over every document)."""
    import numpy as np

    ids = [d.id for batch in backend.iter_documents(index) for d in batch]
    assert len(ids) == len(set(ids)) == expected
    assert set(ids) == {d.id for batch in backend.iter_documents(reference) for d in batch}
    assert backend.count(index) == expected
    probes = encoder.encode_queries(["ocean tide", "bread w5 w9", "solar bee"])
    group = [sorted(ids)] * len(probes)
    got, want = backend.score(index, probes, group), backend.score(reference, probes, group)
    for a, b in zip(got, want, strict=True):
        assert a.keys() == b.keys() == set(ids)
        assert np.allclose([a[k] for k in sorted(a)], [b[k] for k in sorted(b)], atol=1e-6)
