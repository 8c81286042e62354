"""Adopting an index a user already has on Elasticsearch (`hybrid index --from-es`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hybrid.cli.app import app
from typer.testing import CliRunner

from hybrid.backends.es_source import ElasticSource, SourceFields, field_value
from hybrid.encoder import Encoder, EncoderConfig
from hybrid.indexing import IndexJob, run_index
from hybrid.manifest import model_hash
from hybrid.search import SearchConfig, Searcher

runner = CliRunner()

APP_MAPPING = {
    "properties": {
        "sku": {"type": "keyword"},
        "headline": {"type": "keyword"},
        "body": {"properties": {"content": {"type": "text"}, "lang": {"type": "keyword"}}},
        "price": {"type": "float"},
    }
}


def test_field_paths() -> None:
    source = {"a": {"b": {"c": "deep"}}, "x.y": "flat", "tags": ["p", "q"], "n": 3, "obj": {"k": 1}}
    assert field_value(source, "a.b.c") == "deep"
    assert field_value(source, "x.y") == "flat"
    assert field_value(source, "tags") == "p q"
    assert field_value(source, "n") == "3"
    assert field_value(source, "obj") is None and field_value(source, "a.missing") is None


@pytest.fixture
def app_index(es_backend: Any, es_prefix: str, beir_small: Path) -> tuple[str, dict[str, dict[str, Any]]]:
    """An "application" index with its own mapping and field names; two documents lack the text."""
    client = es_backend.client
    name = f"{es_prefix}-shop"
    client.indices.create(index=name, mappings=APP_MAPPING)
    docs: dict[str, dict[str, Any]] = {}
    for n, line in enumerate((beir_small / "corpus.jsonl").read_text().splitlines()):
        row = json.loads(line)
        doc: dict[str, Any] = {"sku": f"sku-{row['_id']}", "headline": row.get("title", ""), "price": float(n)}
        doc["body"] = {"content": row["text"], "lang": "en"} if n % 7 != 3 else {"lang": "en"}
        docs[row["_id"]] = doc
    for doc_id, doc in docs.items():
        client.index(index=name, id=doc_id, document=doc)
    client.indices.refresh(index=name)
    return name, docs


def _snapshot(client: Any, index: str) -> tuple[Any, dict[str, Any]]:
    mapping = client.indices.get_mapping(index=index)[index]["mappings"]
    hits = client.search(index=index, size=1000, query={"match_all": {}})["hits"]["hits"]
    return mapping, {h["_id"]: h["_source"] for h in hits}


@pytest.mark.es
def test_adopt_an_application_index(
    es_url: str, es_backend: Any, es_prefix: str, app_index: tuple[str, dict[str, Any]], tiny_model: Path
) -> None:
    source, docs = app_index
    with_text = {i for i, d in docs.items() if "content" in d["body"]}
    before = _snapshot(es_backend.client, source)
    name = f"{es_prefix}-adopted"
    args = ["index", "--from-es", source, "--text-field", "body.content", "--title-field", "headline"]
    common = ["-i", name, "-m", str(tiny_model), "-q", "--json", "--es-url", es_url]
    result = runner.invoke(app, [*args, *common])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert stats["count"] == len(with_text) and stats["malformed"] == len(docs) - len(with_text)

    adopted = {d.id for batch in es_backend.iter_documents(name) for d in batch}
    assert adopted == with_text
    one = sorted(with_text)[0]
    got = es_backend.get(name, [one])[one]
    assert got.text == docs[one]["body"]["content"] and got.title == docs[one]["headline"]
    hits = Searcher(es_backend, name).search(["ocean tides"], SearchConfig(mode="hybrid", k=3))[0]
    assert len(hits) == 3 and all(h.id in with_text for h in hits)

    again = runner.invoke(app, [*args, *common])  # resumable and idempotent: nothing new is written
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["written"] == 0 and json.loads(again.output)["count"] == len(with_text)
    assert _snapshot(es_backend.client, source) == before  # the application's index is untouched


@pytest.mark.es
def test_adopt_with_an_id_field_and_slices(es_backend: Any, app_index: tuple[str, dict[str, Any]]) -> None:
    source, docs = app_index
    fields = SourceFields(text="body.content", id="sku")
    sliced = ElasticSource(es_backend.client, source, fields, batch=3, slices=2)
    got = {d.id: d.text for d in sliced}
    want = {d["sku"]: d["body"]["content"] for d in docs.values() if "content" in d["body"]}
    assert got == want
    assert sliced.skipped == len(docs) - len(want) and sliced.progress == (len(docs), len(docs))


@pytest.mark.es
def test_adopt_errors_are_one_line(es_url: str, es_prefix: str, beir_small: Path) -> None:
    cases = [
        (["index", "--from-es", "x", "--text-field", "t", "-i", "y"], "give --es-url"),
        (["index", "--from-es", "x", "-i", "y", "--es-url", es_url], "needs --text-field"),
        (["index", str(beir_small), "--from-es", "x", "-i", "y"], "one of them"),
        (["index", "--from-es", f"{es_prefix}-none", "--text-field", "t", "-i", "y", "--es-url", es_url], "not found"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 1, result.output
        assert message in result.output and "Traceback" not in result.output


@pytest.mark.es
def test_a_field_no_document_has_is_refused_before_writing(
    es_url: str, es_backend: Any, es_prefix: str, app_index: tuple[str, dict[str, Any]]
) -> None:
    source, _ = app_index
    before = _snapshot(es_backend.client, source)
    name = f"{es_prefix}-new"
    base = ["index", "--from-es", source, "-i", name, "--es-url", es_url, "-q"]
    cases = [
        (["--text-field", "nosuch.field"], "--text-field 'nosuch.field'"),
        (["--text-field", "body.content", "--title-field", "title"], "--title-field 'title'"),
        (["--text-field", "body.content", "--id-field", "uuid"], "--id-field 'uuid'"),
    ]
    for extra, message in cases:
        result = runner.invoke(app, [*base, *extra])
        assert result.exit_code == 1, result.output
        line = result.output.strip()
        assert line.startswith("Error: ") and "\n" not in line and message in line, line
        assert "body.content, body.lang, headline, price, sku" in line, line
        assert not es_backend.client.indices.get(index=f"{name}*", allow_no_indices=True), "something was written"
    in_place = ["index", "--from-es", source, "-i", source, "--in-place", "--es-url", es_url, "-q"]
    result = runner.invoke(app, [*in_place, "--text-field", "body.contents"])
    assert result.exit_code == 1 and "--text-field 'body.contents'" in result.output, result.output
    assert _snapshot(es_backend.client, source) == before  # not adopted: the mapping is untouched


@pytest.mark.es
def test_in_place_refuses_a_partial_or_disabled_source(es_url: str, es_backend: Any, es_prefix: str) -> None:
    """Updating a document rewrites it from _source: without _source it fails, and with
    includes/excludes the left-out fields would be lost, so adoption in place is refused."""
    client = es_backend.client
    cases = [
        ({"enabled": False}, "disables _source"),
        ({"excludes": ["price"]}, "keeps only part of each document"),
        ({"includes": ["body.*", "headline"]}, "keeps only part of each document"),
    ]
    for n, (source, reason) in enumerate(cases):
        name = f"{es_prefix}-src{n}"
        client.indices.create(index=name, mappings={**APP_MAPPING, "_source": source})
        client.index(index=name, id="d1", document={"headline": "h", "body": {"content": "tides"}, "price": 2.0})
        client.indices.refresh(index=name)
        before = client.indices.get_mapping(index=name)
        args = ["index", "--from-es", name, "-i", name, "--in-place", "--text-field", "body.content"]
        result = runner.invoke(app, [*args, "--es-url", es_url, "-q"])
        assert result.exit_code == 1, result.output
        line = result.output.strip()
        assert line.startswith("Error: ") and "\n" not in line, line
        assert reason in line and f"--from-es {name} -i NEW_NAME" in line, line
        assert client.indices.get_mapping(index=name) == before  # not adopted


def _app_fields(client: Any, index: str) -> tuple[Any, dict[str, Any]]:
    """The application's own mapping fields and documents, without hybrid's vector fields."""
    mapping, docs = _snapshot(client, index)
    own = {k: v for k, v in mapping["properties"].items() if not k.startswith("hybrid_vector_")}
    return own, {i: {k: v for k, v in d.items() if not k.startswith("hybrid_vector_")} for i, d in docs.items()}


def _adopt_in_place(es_backend: Any, source: str, model: Path) -> tuple[Any, SourceFields]:
    """Adopt the application index in place and embed it with ``model`` (hybrid_vector_v1)."""
    from hybrid.backends.es_inplace import adopt

    client = es_backend.client
    fields = SourceFields(text="body.content", title="headline")
    adopt(client, source, fields.text, fields.title)
    encoder = Encoder(EncoderConfig(model=str(model), batch_size=8))
    run_index(IndexJob(corpus=None, index=source), es_backend, encoder, documents=ElasticSource(client, source, fields))
    return client, fields


@pytest.mark.es
def test_adopt_in_place(es_url: str, es_backend: Any, app_index: tuple[str, dict[str, Any]], tiny_model: Path) -> None:
    source, docs = app_index
    client = es_backend.client
    client.indices.put_mapping(index=source, meta={"owner": "shop-team"})
    with_text = {i for i, d in docs.items() if "content" in d["body"]}
    before = _app_fields(client, source)
    args = ["index", "--from-es", source, "--in-place", "--text-field", "body.content", "--title-field", "headline"]
    common = ["-i", source, "-m", str(tiny_model), "-q", "--json", "--es-url", es_url]
    result = runner.invoke(app, [*args, *common])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["count"] == len(with_text)

    assert es_backend.current(source) == f"{source}@hybrid_vector_v1"
    mapping = client.indices.get_mapping(index=source)[source]["mappings"]
    assert mapping["properties"]["hybrid_vector_v1"]["type"] == "dense_vector"
    assert mapping["_meta"]["owner"] == "shop-team"  # the user's own _meta is kept
    assert mapping["_meta"]["hybrid_in_place"]["active"] == "hybrid_vector_v1"
    assert _app_fields(client, source) == before  # nothing of theirs changed
    assert client.count(index=source)["count"] == len(docs)  # no document added or removed

    info = es_backend.info(source)
    assert info.count == len(with_text) and info.recipe["model_hash"] == model_hash(tiny_model)
    for mode in ("bm25", "dense", "hybrid"):
        hits = Searcher(es_backend, source).search(["ocean tides"], SearchConfig(mode=mode, k=3))[0]  # type: ignore[arg-type]
        assert len(hits) == (1 if mode == "bm25" else 3), mode  # one document has the words
        assert all(h.id in with_text and h.text for h in hits), mode
    doc = es_backend.get(source, [sorted(with_text)[0]])
    assert doc[sorted(with_text)[0]].text == docs[sorted(with_text)[0]]["body"]["content"]

    again = runner.invoke(app, [*args, *common])
    assert again.exit_code == 0 and json.loads(again.output)["written"] == 0, again.output
    wrong = runner.invoke(app, ["index", "--from-es", source, "--in-place", "--text-field", "x", *common])
    assert wrong.exit_code == 1 and "use the same fields" in wrong.output


@pytest.mark.es
def test_info_counts_documents_without_a_vector(
    es_url: str, es_backend: Any, app_index: tuple[str, dict[str, Any]], tiny_model: Path
) -> None:
    source, docs = app_index
    with_text = {i for i, d in docs.items() if "content" in d["body"]}
    _adopt_in_place(es_backend, source, tiny_model)
    result = runner.invoke(app, ["info", "-i", source, "--json", "--es-url", es_url])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["count"] == len(with_text) and info["extra"]["without_vector"] == len(docs) - len(with_text)
    table = runner.invoke(app, ["info", "-i", source, "--es-url", es_url])
    assert table.exit_code == 0, table.output
    said = " ".join(table.output.replace("│", " ").split())  # the cell wraps between borders
    assert f"{len(docs) - len(with_text)} documents have no vector" in said and f"hybrid sync -i {source}" in said


@pytest.mark.es
def test_in_place_refreshes_keep_at_most_two_vector_fields(
    es_backend: Any, app_index: tuple[str, dict[str, Any]], tiny_model: Path, other_model: Path
) -> None:
    """Every in-place re-embedding adds a field; the one it replaces is emptied once the grace
    has passed (here 0, then 1 s), with no --drop-old."""
    source, docs = app_index
    with_text = sum(1 for d in docs.values() if "content" in d["body"])
    client, fields = _adopt_in_place(es_backend, source, tiny_model)

    def having(field: str) -> int:
        return int(client.count(index=source, query={"exists": {"field": field}})["count"])

    def refresh(model: Path) -> None:
        encoder = Encoder(EncoderConfig(model=str(model), batch_size=8))
        documents = ElasticSource(client, source, fields)
        run_index(IndexJob(corpus=None, index=source, recreate=True), es_backend, encoder, documents=documents)

    refresh(other_model)  # grace 0: v1 is emptied as v2 becomes active
    assert es_backend.current(source) == f"{source}@hybrid_vector_v2"
    assert (having("hybrid_vector_v1"), having("hybrid_vector_v2")) == (0, with_text)
    es_backend.retirement.grace_s = 1.0
    refresh(tiny_model)
    assert (having("hybrid_vector_v2"), having("hybrid_vector_v3")) == (with_text, with_text)  # in its grace
    es_backend.retirement.wait()
    assert (having("hybrid_vector_v2"), having("hybrid_vector_v3")) == (0, with_text)
    hits = Searcher(es_backend, source).search(["ocean tides"], SearchConfig(mode="dense", k=3))[0]
    assert len(hits) == 3


@pytest.mark.es
def test_in_place_refresh_while_serving(
    es_backend: Any, app_index: tuple[str, dict[str, Any]], tiny_model: Path, other_model: Path
) -> None:
    """Another model fills hybrid_vector_v2 while a client queries the server: zero errors,
    every response from one real (field, model) pair with that pair's own results, and the
    application's documents unchanged."""
    import threading
    import time

    from hybrid.serving.app import create_app
    from hybrid.serving.engine import Engine, EngineConfig
    from tests.test_serve import query_loop, running

    source, _ = app_index
    client, fields = _adopt_in_place(es_backend, source, tiny_model)
    before = _app_fields(client, source)
    queries = ["ocean tides", "solar panels", "honey bees"]
    config = SearchConfig(mode="dense", k=3)
    v1 = f"{source}@hybrid_vector_v1"
    expected = {(v1, model_hash(tiny_model)): Searcher(es_backend, source).search(queries, config)}
    seen: list[tuple[str, str, int, list[str]]] = []
    errors: list[str] = []
    stop = threading.Event()

    engine = Engine(es_backend, source, EngineConfig(poll_s=0.05))
    # v1 keeps its vectors longer than the server may take to switch (the deadline below)
    es_backend.retirement.grace_s = 75
    with running(create_app(engine)) as url:
        thread = threading.Thread(target=query_loop, args=(url, queries, 0, stop, seen, errors))
        thread.start()
        time.sleep(0.5)
        second = Encoder(EncoderConfig(model=str(other_model), batch_size=4))
        job = IndexJob(corpus=None, index=source, recreate=True, batch_size=4)
        run_index(job, es_backend, second, documents=ElasticSource(client, source, fields))
        v2 = f"{source}@hybrid_vector_v2"
        assert es_backend.current(source) == v2
        # in its grace the old field still answers for its own model
        pinned = Searcher(es_backend, v1, Encoder(EncoderConfig(model=str(tiny_model)))).search(queries, config)
        expected[(v2, model_hash(other_model))] = Searcher(es_backend, source).search(queries, config)
        deadline = time.monotonic() + 60
        while not any(v == v2 for v, *_ in seen[-3:]) and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()
        thread.join(timeout=60)
    assert errors == []
    assert {(v, h) for v, h, _, _ in seen} == set(expected)
    for version, digest, query, ids in seen:
        assert ids == [h.id for h in expected[(version, digest)][query]]
    # after its grace the old field is emptied; the application's data is as it was
    assert [[h.id for h in row] for row in pinned] == [
        [h.id for h in row] for row in expected[(v1, model_hash(tiny_model))]
    ]
    es_backend.retirement.wait()
    assert client.count(index=source, query={"exists": {"field": "hybrid_vector_v1"}})["count"] == 0
    assert _app_fields(client, source) == before


@pytest.mark.es
def test_training_refresh_in_place(
    es_backend: Any, app_index: tuple[str, dict[str, Any]], tiny_model: Path, beir_small: Path, tmp_path: Path
) -> None:
    from hybrid.negatives import SamplerConfig
    from hybrid.training.config import TrainConfig
    from hybrid.training.trainer import train

    source, docs = app_index
    client, _ = _adopt_in_place(es_backend, source, tiny_model)
    before = _app_fields(client, source)
    config = TrainConfig(
        index=source,
        queries=beir_small / "queries.jsonl",
        qrels=beir_small / "qrels/test.tsv",
        out=tmp_path / "run",
        sampler=SamplerConfig(n=2, depth=10),
        steps=2,
        batch_size=2,
        bm25_depth=5,
        knn_depth=5,
        save_every=0,
        refresh_at_end=True,
    )
    result = train(config, es_backend)
    assert result.refreshes and es_backend.current(source) == f"{source}@hybrid_vector_v2"
    info = es_backend.info(source)
    assert info.count == sum(1 for d in docs.values() if "content" in d["body"])
    assert info.recipe["model_hash"] == model_hash(result.final)
    hits = Searcher(es_backend, source).search(["ocean tides"], SearchConfig(mode="hybrid", k=3))[0]
    assert len(hits) == 3
    assert _app_fields(client, source) == before


@pytest.mark.es
def test_in_place_rebuild_drops_the_old_field_on_request(
    es_url: str, es_backend: Any, app_index: tuple[str, dict[str, Any]], tiny_model: Path, other_model: Path
) -> None:
    source, docs = app_index
    client = es_backend.client
    with_text = sum(1 for d in docs.values() if "content" in d["body"])
    base = ["index", "--from-es", source, "--in-place", "--text-field", "body.content", "-i", source, "-q"]
    where = ["--es-url", es_url, "--json"]
    first = runner.invoke(app, [*base, "-m", str(tiny_model), *where])
    assert first.exit_code == 0, first.output
    before = _app_fields(client, source)
    wrong = runner.invoke(app, [*base, "--drop-old", *where])
    assert wrong.exit_code == 1 and "--drop-old goes with --in-place --recreate" in wrong.output
    second = runner.invoke(app, [*base, "--recreate", "--drop-old", "-m", str(other_model), *where])
    assert second.exit_code == 0, second.output
    assert es_backend.current(source) == f"{source}@hybrid_vector_v2"

    def having(field: str) -> int:
        return int(client.count(index=source, query={"exists": {"field": field}})["count"])

    assert having("hybrid_vector_v2") == with_text and having("hybrid_vector_v1") == 0
    from hybrid.errors import IndexNotFoundError

    with pytest.raises(IndexNotFoundError):  # a reader pinned to the dropped field moves on
        es_backend.info(f"{source}@hybrid_vector_v1")
    assert _app_fields(client, source) == before
    hits = Searcher(es_backend, source).search(["ocean tides"], SearchConfig(mode="dense", k=3))[0]
    assert len(hits) == 3


@pytest.mark.es
def test_in_place_survives_the_application_deleting_documents(
    es_backend: Any, app_index: tuple[str, dict[str, Any]], tiny_model: Path
) -> None:
    from hybrid.backends.es_inplace import adopt

    source, docs = app_index
    client = es_backend.client
    fields = SourceFields(text="body.content")
    adopt(client, source, fields.text, None)
    deleted: list[str] = []

    def read_then_app_deletes() -> Any:
        for doc in ElasticSource(client, source, fields):
            if not deleted:  # the application removes a document hybrid has already read
                client.delete(index=source, id=doc.id, refresh=True)
                deleted.append(doc.id)
            yield doc

    encoder = Encoder(EncoderConfig(model=str(tiny_model), batch_size=4))
    job = IndexJob(corpus=None, index=source, batch_size=3)
    stats = run_index(job, es_backend, encoder, documents=read_then_app_deletes())
    with_text = sum(1 for d in docs.values() if "content" in d["body"])
    assert stats.count == with_text - 1 == es_backend.count(source)
    assert deleted[0] not in es_backend.get(source, [deleted[0]])
