"""Adopting an index a user already has on Elasticsearch (`hybrid index --from-es`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hybrid.cli.app import app
from typer.testing import CliRunner

from hybrid.backends.es_source import ElasticSource, SourceFields, field_value
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
        docs[f"app-{row['_id']}"] = doc
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
