"""Behaviour every backend must share; each test runs on embedded and on real ES."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hybrid.errors import DimensionMismatchError, IndexNotFoundError
from hybrid.indexing import IndexJob, run_index
from hybrid.search import SearchConfig, Searcher
from hybrid.types import Document
from tests.conftest import FIXTURES, write_jsonl


def build(backend: Any, name: str, encoder: Any, corpus: Path, **kw: Any) -> Any:
    return run_index(IndexJob(corpus=corpus, index=name, batch_size=5, **kw), backend, encoder)


def test_index_count_and_search_modes(backend_and_name: tuple[Any, str], tiny_encoder: Any, beir_small: Path) -> None:
    backend, name = backend_and_name
    stats = build(backend, name, tiny_encoder, beir_small)
    assert (stats.read, stats.written, stats.count) == (12, 12, 12)
    assert backend.count(name) == 12
    info = backend.info(name)
    assert (info.dims, info.count, info.model) == (32, 12, str(tiny_encoder.model_dir))

    searcher = Searcher(backend, name, tiny_encoder)
    bm25 = searcher.search(["ocean tides moon gravity"], SearchConfig(mode="bm25", k=3))[0]
    assert bm25[0].id == "d6" and bm25[0].text.startswith("The gravity")

    # kNN must agree with brute force over the encoder's own vectors.
    docs = list(backend.get(name, [f"d{i}" for i in range(1, 13)]).values())
    assert len(docs) == 12
    doc_vecs = tiny_encoder.encode_passages(docs)
    query_vec = tiny_encoder.encode_queries(["wild yeast bread"])
    exact = np.argsort(-(doc_vecs @ query_vec[0]))[:3]
    dense = backend.knn(name, query_vec, 3)[0]
    assert [h.id for h in dense] == [docs[i].id for i in exact]
    assert dense[0].score == pytest.approx(float(doc_vecs[exact[0]] @ query_vec[0]), abs=1e-4)

    hybrid = searcher.search(["ocean tides moon gravity"], SearchConfig(mode="hybrid", k=5))[0]
    assert len(hybrid) == 5 and "d6" in [h.id for h in hybrid]
    assert set(hybrid[0].sources) <= {"bm25", "dense"}


def test_rerun_is_idempotent(backend_and_name: tuple[Any, str], tiny_encoder: Any, beir_small: Path) -> None:
    backend, name = backend_and_name
    first = build(backend, name, tiny_encoder, beir_small)
    again = build(backend, name, tiny_encoder, beir_small)
    assert again.resumed and again.version == first.version
    assert (again.written, again.already_indexed, again.count) == (0, 12, 12)


def test_resume_after_partial_run(backend_and_name: tuple[Any, str], tiny_encoder: Any, beir_small: Path) -> None:
    backend, name = backend_and_name
    partial = build(backend, name, tiny_encoder, beir_small, limit=5)
    assert partial.count == 5
    rest = build(backend, name, tiny_encoder, beir_small)
    assert (rest.written, rest.already_indexed, rest.count) == (7, 5, 12)


def test_repeated_ids_are_indexed_once(backend_and_name: tuple[Any, str], tiny_encoder: Any, tmp_path: Path) -> None:
    backend, name = backend_and_name
    rows = [{"id": f"r{i % 7}", "text": f"text number {i}"} for i in range(12)]  # r0..r4 repeat
    stats = build(backend, name, tiny_encoder, write_jsonl(tmp_path / "rep.jsonl", rows))
    assert (stats.read, stats.written, stats.duplicates, stats.count) == (12, 7, 5, 7)
    assert backend.get(name, ["r0"])["r0"].text == "text number 0"  # first occurrence kept


def test_wrong_dimension_is_refused_and_index_intact(
    backend_and_name: tuple[Any, str], tiny_encoder: Any, beir_small: Path
) -> None:
    backend, name = backend_and_name
    build(backend, name, tiny_encoder, beir_small)
    writer = backend.open_writer(_spec(name, tiny_encoder))
    with pytest.raises(DimensionMismatchError, match="vectors have 16 dimensions but index"):
        writer.write([Document(id="new", text="x")], np.ones((1, 16), dtype=np.float32))
    writer.close()
    with pytest.raises(DimensionMismatchError, match="holds 32-d vectors"):
        backend.open_writer(_spec(name, tiny_encoder, dims=16))
    with pytest.raises(DimensionMismatchError):
        backend.knn(name, np.ones((1, 16), dtype=np.float32), 3)
    assert backend.count(name) == 12
    assert backend.bm25(name, ["honey bees"], 1)[0][0].id == "d5"


def test_recreate_swaps_to_new_version(backend_and_name: tuple[Any, str], tiny_encoder: Any, beir_small: Path) -> None:
    backend, name = backend_and_name
    first = build(backend, name, tiny_encoder, beir_small)
    second = build(backend, name, tiny_encoder, FIXTURES / "msmarco-collection.tsv", recreate=True)
    assert second.version != first.version and second.version.endswith("v000002")
    assert backend.info(name).version == second.version
    assert set(backend.get(name, ["d1", "0"])) == {"0"}
    assert backend.count(name) == 12
    assert not _has_version(backend, name, first.version)


def test_unknown_index(backend_and_name: tuple[Any, str]) -> None:
    backend, name = backend_and_name
    with pytest.raises(IndexNotFoundError, match=f"index '{name}' not found"):
        backend.bm25(name, ["x"], 1)


def _spec(name: str, encoder: Any, dims: int | None = None) -> Any:
    from hybrid.config import IndexSpec

    return IndexSpec(name=name, dims=dims or encoder.dims, model=encoder.name, normalized=True)


def _has_version(backend: Any, name: str, version: str) -> bool:
    return version in backend.versions(name)


def test_a_second_writer_is_refused_and_deletes_nothing(backend_and_name: tuple[Any, str], tiny_encoder: Any) -> None:
    import os

    from hybrid.config import IndexSpec
    from hybrid.errors import IndexBusyError

    backend, name = backend_and_name
    spec = IndexSpec(name=name, dims=32, model="m", normalized=True, recipe=tiny_encoder.recipe())
    first = backend.open_writer(spec)
    first.write([Document(id="a", text="alpha")], tiny_encoder.encode_passages([Document(id="a", text="alpha")]))
    with pytest.raises(IndexBusyError, match=f"process {os.getpid()} on "):
        backend.open_writer(spec, recreate=True)  # would delete the version being built
    assert first.version in backend.versions(name)
    assert first.count() == 1
    first.close()
    again = backend.open_writer(spec)  # released on close; the unfinished version resumes
    assert again.resumed and again.version == first.version
    again.close()


@pytest.mark.es
def test_a_dead_writers_lock_is_taken_over(es_backend: Any, es_prefix: str, tiny_encoder: Any) -> None:
    import socket
    import time

    from hybrid.backends.locks import LOCK_INDEX, ElasticLock
    from hybrid.config import IndexSpec

    name = f"{es_prefix}-idx"
    ElasticLock(es_backend.client, name).release()  # creates the lock index
    dead = {"pid": 2**22 + 17, "host": socket.gethostname(), "since": "then", "heartbeat": time.time()}
    es_backend.client.index(index=LOCK_INDEX, id=name, document=dead, refresh=True)
    writer = es_backend.open_writer(IndexSpec(name=name, dims=32, model="m", normalized=True))
    held = es_backend.client.get(index=LOCK_INDEX, id=name)["_source"]
    assert held["pid"] != dead["pid"]
    writer.close()
    assert not es_backend.client.exists(index=LOCK_INDEX, id=name)


def test_a_swapped_out_version_is_kept_for_the_grace_period(
    backend_and_name: tuple[Any, str], tiny_encoder: Any, beir_small: Path
) -> None:
    backend, name = backend_and_name
    build(backend, name, tiny_encoder, beir_small)
    first = backend.current(name)
    backend.retirement.grace_s = 1.5
    build(backend, name, tiny_encoder, beir_small, recreate=True)
    assert backend.current(name) != first
    assert first in backend.versions(name)  # still there for searches pinned to it
    pinned = Searcher(backend, first, tiny_encoder).search(["ocean tides"], SearchConfig(mode="hybrid", k=2))[0]
    assert len(pinned) == 2
    backend.retirement.wait()  # close() waits too
    assert first not in backend.versions(name)
    backend.retirement.grace_s = 0.0
    build(backend, name, tiny_encoder, beir_small, recreate=True)
    assert len(backend.versions(name)) == 1  # no grace: deleted at the swap


@pytest.mark.es
def test_a_writer_whose_lock_was_taken_over_cannot_touch_the_new_holders(es_backend: Any, es_prefix: str) -> None:
    from hybrid.backends import locks
    from hybrid.errors import IndexBusyError

    name = f"{es_prefix}-locked"
    old = locks.ElasticLock(es_backend.client, name)
    stale = {**locks.holder(), "pid": 2**22 + 19, "token": old.token, "heartbeat": 0}
    es_backend.client.index(index=locks.LOCK_INDEX, id=name, document=stale, refresh=True)
    new = locks.ElasticLock(es_backend.client, name)  # takes the stale lock over
    old._beat = -1e9  # due for a heartbeat
    with pytest.raises(IndexBusyError, match="lost the write lock"):
        old.beat()
    old.release()  # must not delete the new holder's lock
    held = es_backend.client.get(index=locks.LOCK_INDEX, id=name)["_source"]
    assert held["token"] == new.token
    new.release()
    assert not es_backend.client.exists(index=locks.LOCK_INDEX, id=name)


def test_refresh_writes_new_vectors_and_keeps_the_text(
    backend_and_name: tuple[Any, str],
    tiny_encoder: Any,
    other_model: Path,
    beir_small: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refresh (same documents, another model) makes a new version whose vectors are the new
    model's and whose BM25 ranking and documents are unchanged; the embedded store does it
    without rebuilding Lucene or rewriting a document."""
    from hybrid.encoder import Encoder, EncoderConfig
    from hybrid.training.refresh import reembed

    backend, name = backend_and_name
    build(backend, name, tiny_encoder, beir_small)
    before = backend.current(name)
    query = ["ocean tides moon gravity"]
    bm25_before = [(h.id, round(h.score, 4)) for h in backend.bm25(name, query, 12)[0]]
    if backend.kind == "embedded":

        def no_rebuild(*_a: Any, **_k: Any) -> int:
            raise AssertionError("a refresh rebuilt the Lucene index")

        monkeypatch.setattr("hybrid.backends.embedded.backend.build_lucene", no_rebuild)
    other = Encoder(EncoderConfig(model=str(other_model)))
    version, count, _ = reembed(backend, name, other, batch_size=5)
    assert backend.current(name) == version != before and count == backend.count(name) == 12
    assert backend.info(name).model == str(other_model)
    assert [(h.id, round(h.score, 4)) for h in backend.bm25(name, query, 12)[0]] == bm25_before
    docs = backend.get(name, [f"d{i}" for i in range(1, 13)])
    ordered = [docs[f"d{i}"] for i in range(1, 13)]
    assert ordered[5].text.startswith("The gravity")
    vecs = other.encode_passages(ordered)
    q = other.encode_queries(query)
    exact = np.argsort(-(vecs @ q[0]))[:5]
    dense = backend.knn(name, q, 5)[0]
    assert [h.id for h in dense] == [ordered[i].id for i in exact]
    assert [h.score for h in dense] == pytest.approx([float(vecs[i] @ q[0]) for i in exact], abs=1e-4)


def test_refresh_from_shares_embedded_elsewhere(
    backend_and_name: tuple[Any, str], tiny_encoder: Any, other_model: Path, beir_small: Path, tmp_path: Path
) -> None:
    """Three processes' shares of the corpus (as a multi-process refresh writes them) make the
    same index as one process encoding it all; shares out of step with the index are refused
    before anything is swapped in."""
    from hybrid.encoder import Encoder, EncoderConfig
    from hybrid.errors import HybridError
    from hybrid.training.distributed import Distributed
    from hybrid.training.refresh import encode_share, reembed

    backend, name = backend_and_name
    build(backend, name, tiny_encoder, beir_small)
    other = Encoder(EncoderConfig(model=str(other_model)))
    shares = [tmp_path / f"rank-{r}" for r in range(3)]
    counts = [encode_share(backend, name, other, Distributed(r, 3).part(12), shares[r], 3) for r in range(3)]
    assert counts == [4, 4, 4]
    ids = sorted(d.id for batch in backend.iter_documents(name) for d in batch)

    (shares[1] / "ids.jsonl").write_text((shares[2] / "ids.jsonl").read_text())  # a share of other documents
    before = backend.current(name)
    with pytest.raises(HybridError, match="out of step"):
        reembed(backend, name, other, batch_size=5, shares=shares)
    assert backend.current(name) == before
    with pytest.raises(HybridError, match="incomplete"):
        reembed(backend, name, other, batch_size=5, shares=shares[:2])
    encode_share(backend, name, other, Distributed(1, 3).part(12), shares[1], 3)

    version, count, _ = reembed(backend, name, other, batch_size=5, shares=shares)
    assert backend.current(name) == version != before and count == 12
    probes = other.encode_queries(["ocean tides moon gravity", "bread"])
    got = backend.score(name, probes, [ids] * 2)
    docs = backend.get(name, ids)
    want = other.encode_passages([docs[i] for i in ids]) @ probes.T
    for j, row in enumerate(got):
        assert [row[i] for i in ids] == pytest.approx(list(want[:, j]), abs=1e-4)


def test_interrupted_refresh_is_never_resumed_by_an_append(
    embedded_backend: Any, tiny_encoder: Any, beir_small: Path, tmp_path: Path
) -> None:
    """An unfinished refresh shares the current version's documents: the next append resumes
    the current version (and drops the refresh), and writing to shared documents first gives
    the writer its own copy, so the version it shared them with is untouched."""
    import os
    import shutil

    from hybrid.backends.embedded.store import VersionStore
    from hybrid.config import IndexSpec

    backend = embedded_backend
    build(backend, "idx", tiny_encoder, beir_small, limit=6)
    current = backend.current("idx")
    spec = IndexSpec(name="idx", dims=32, model=str(tiny_encoder.model_dir), normalized=True)
    refresh = backend.open_writer(spec, recreate=True, vectors_only=True)
    docs = list(backend.get("idx", ["d1", "d2"]).values())
    with pytest.raises(Exception, match="in their order"):  # rows must match the shared documents
        refresh.write(docs[::-1], np.ones((2, 32), dtype=np.float32) / np.sqrt(32))
    refresh.close()  # killed before commit
    assert len(backend.versions("idx")) == 2
    again = build(backend, "idx", tiny_encoder, beir_small)
    assert again.resumed and again.version == current and again.count == 12
    assert backend.versions("idx") == [current]

    shared = tmp_path / "shared"
    shared.mkdir()
    store_dir = backend.index_dir("idx") / current
    os.link(store_dir / "docs.sqlite", shared / "docs.sqlite")
    shutil.copy(store_dir / "vectors.f32", shared / "vectors.f32")
    VersionStore(shared, 32, writable=True).close()
    assert os.stat(shared / "docs.sqlite").st_ino != os.stat(store_dir / "docs.sqlite").st_ino


def test_refresh_after_an_interrupted_append_rewrites_the_text(
    embedded_backend: Any, tiny_encoder: Any, beir_small: Path
) -> None:
    """An append cut short leaves rows in SQLite that the Lucene index lacks: a refresh then
    does not share that Lucene index but rebuilds it, so BM25 finds the appended documents."""
    from hybrid.training.refresh import reembed

    backend = embedded_backend
    build(backend, "idx", tiny_encoder, beir_small, limit=6)
    from hybrid.config import IndexSpec

    spec = backend.info("idx")
    writer = backend.open_writer(IndexSpec(name="idx", dims=spec.dims, model=spec.model, normalized=True))
    extra = [Document(id="late", title="", text="zeppelin aurora quasar")]
    writer.write(extra, tiny_encoder.encode_passages(extra))
    writer.close()  # interrupted: never committed
    assert "late" not in [h.id for h in backend.bm25("idx", ["zeppelin quasar"], 3)[0]]  # not in Lucene yet
    _, count, _ = reembed(backend, "idx", tiny_encoder, batch_size=4)
    assert count == 7
    assert "late" in [h.id for h in backend.bm25("idx", ["zeppelin quasar"], 3)[0]]


@pytest.mark.es
def test_es_client_reads_responses_with_hybrids_serializer(es_backend: Any) -> None:
    """The client hybrid connects reads JSON (plain and compatibility mode) with its orjson
    serializer, which keeps an integer beyond 64 bits exact."""
    serializers = es_backend.client.transport.serializers
    for mimetype in ("application/json", "application/vnd.elasticsearch+json"):
        serializer = serializers.get_serializer(mimetype)
        assert type(serializer).json_loads.__qualname__.startswith("_json_serializer."), mimetype
        assert serializer.loads(b'{"id": 123456789012345678901234}') == {"id": 123456789012345678901234}
