"""`hybrid sync`: an adopted index stays complete while its application writes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hybrid.cli.app import app
from typer.testing import CliRunner

from hybrid.backends import es_sync
from hybrid.backends.es_hash import hash_field, text_hash
from hybrid.backends.es_source import ElasticSource, SourceFields
from hybrid.encoder import Encoder, EncoderConfig
from hybrid.indexing import IndexJob, run_index
from hybrid.sync import PassStats, SyncJob, missing_count, sync
from hybrid.types import Document

runner = CliRunner()
HYBRID = [sys.executable, "-m", "hybrid.cli"]
FIELD = "hybrid_vector_v1"
WORDS = ["ocean", "tide", "moon", "bread", "yeast", "solar", "panel", "bee", "wind", "river", "stone", "leaf"]
# the application's own mapping: strict, so a field hybrid forgot to map would be refused
SHOP_MAPPING = {
    "dynamic": "strict",
    "properties": {
        "sku": {"type": "keyword"},
        "headline": {"type": "text"},
        "body": {"properties": {"content": {"type": "text"}}},
    },
}


def _text(rng: random.Random) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(4, 12)))


def _doc(rng: random.Random, n: int, text: str | None = "") -> dict[str, Any]:
    body = {} if text is None else {"content": text or _text(rng)}
    return {"sku": f"sku-{n}", "headline": f"item {n}", "body": body}


def forget_checks(client: Any, index: str) -> None:
    """Delete what sync remembered about ``index`` in hybrid's bookkeeping index."""
    from hybrid.backends.locks import LOCK_INDEX

    uuid = next(iter(client.indices.get_settings(index=index, name="index.uuid").values()))["settings"]["index"]["uuid"]
    for field in ("vector", FIELD, "hybrid_vector_v2"):
        client.options(ignore_status=404).delete(index=LOCK_INDEX, id=f"sync:{uuid}:{field}")


@pytest.fixture
def shop(es_backend: Any, es_prefix: str, tiny_model: Path) -> Iterator[str]:
    """An application index of 40 documents (one without text) adopted in place by the tiny model."""
    from elasticsearch import helpers

    from hybrid.backends.es_inplace import adopt

    client = es_backend.client
    name = f"{es_prefix}-shop"
    client.indices.create(index=name, mappings=SHOP_MAPPING)
    rng = random.Random(0)
    rows = [_doc(rng, n, None if n == 7 else "") for n in range(40)]
    helpers.bulk(client, ({"_index": name, "_id": f"p{n}", "_source": r} for n, r in enumerate(rows)), refresh=True)
    fields = SourceFields(text="body.content", title="headline")
    adopt(client, name, fields.text, fields.title)
    encoder = Encoder(EncoderConfig(model=str(tiny_model), batch_size=8))
    run_index(IndexJob(corpus=None, index=name), es_backend, encoder, documents=ElasticSource(client, name, fields))
    yield name
    forget_checks(client, name)


def _all(client: Any, index: str) -> dict[str, dict[str, Any]]:
    client.indices.refresh(index=index)
    hits = client.search(index=index, size=10_000, query={"match_all": {}})["hits"]["hits"]
    return {h["_id"]: h["_source"] for h in hits}


def _passage(source: dict[str, Any]) -> Document | None:
    text = (source.get("body") or {}).get("content")
    return Document(id="", text=text, title=source.get("headline", "")) if text and text.strip() else None


def assert_complete(backend: Any, index: str, field: str = FIELD) -> int:
    """Every document with text has a vector of its current text (hash and vector checked);
    returns how many documents have no text."""
    client = backend.client
    docs = _all(client, index)
    without = client.search(index=index, size=10_000, query={"bool": {"must_not": [{"exists": {"field": field}}]}})
    textless = {i for i, s in docs.items() if _passage(s) is None}
    assert {h["_id"] for h in without["hits"]["hits"]} <= textless
    for doc_id, source in docs.items():
        passage = _passage(source)
        if passage is not None:
            assert source.get(hash_field(field)) == text_hash(passage), doc_id
    return len(textless)


def assert_vector_of(backend: Any, index: str, encoder: Any, doc_id: str) -> None:
    """The stored vector of ``doc_id`` is the encoding of its current text (cosine ~ 1)."""
    source = _all(backend.client, index)[doc_id]
    passage = _passage(source)
    assert passage is not None
    score = backend.score(index, encoder.encode_passages([passage]), [[doc_id]])[0][doc_id]
    assert score == pytest.approx(1.0, abs=1e-3)


def test_sync_has_help() -> None:
    result = runner.invoke(app, ["sync", "--help"])
    assert result.exit_code == 0 and "--follow" in result.output and "--interval" in result.output


def test_embedded_store_is_a_one_line_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["sync", "-i", "idx", "--store", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: hybrid sync keeps Elasticsearch indices")
    assert "Traceback" not in result.output


@pytest.mark.es
def test_an_index_never_adopted_is_a_one_line_error(es_url: str, es_backend: Any, es_prefix: str) -> None:
    name = f"{es_prefix}-plain"
    es_backend.client.indices.create(index=name, mappings=SHOP_MAPPING)
    result = runner.invoke(app, ["sync", "-i", name, "--es-url", es_url])
    assert result.exit_code == 1, result.output
    assert result.output.count("\n") == 1 and "adopt it first" in result.output and "--in-place" in result.output
    missing = runner.invoke(app, ["sync", "-i", f"{es_prefix}-none", "--es-url", es_url])
    assert missing.exit_code == 1 and "not found" in missing.output


@pytest.mark.es
def test_sync_embeds_missing_and_changed_and_skips_text_less(
    es_url: str, es_backend: Any, shop: str, tiny_encoder: Any
) -> None:
    client = es_backend.client
    rng = random.Random(1)
    for n in range(40, 50):  # written by the application after adoption: no vector
        client.index(index=shop, id=f"p{n}", document=_doc(rng, n))
    client.index(index=shop, id="blank", document=_doc(rng, 99, "   "))
    client.update(index=shop, id="p3", doc={"body": {"content": "a new text about the moon"}})  # keeps a stale vector
    client.indices.refresh(index=shop)
    assert missing_count(es_backend, shop) == 12  # ten new, the blank one, and p7 which never had text

    first = runner.invoke(app, ["sync", "-i", shop, "--es-url", es_url, "--json", "-q"])
    assert first.exit_code == 0, first.output
    (stats,) = [json.loads(line) for line in first.output.splitlines()]
    assert (stats["found"], stats["embedded"], stats["skipped"], stats["changed"]) == (12, 11, 2, 1)
    assert stats["checked"] >= 1 and stats["conflicts"] == 0
    assert assert_complete(es_backend, shop) == 2
    assert_vector_of(es_backend, shop, tiny_encoder, "p3")
    assert_vector_of(es_backend, shop, tiny_encoder, "p45")
    assert missing_count(es_backend, shop) == 2

    text = runner.invoke(app, ["sync", "-i", shop, "--es-url", es_url, "-q"])
    assert text.exit_code == 0, text.output
    assert text.output.startswith(f"pass 1 ({shop}@{FIELD}): 2 missing, 0 changed")
    assert "embedded 0; 2 skipped without text" in text.output

    # within one run, text-less documents are not found again, unless rewritten with text
    stop = threading.Event()
    passes = sync(SyncJob(index=shop, follow=True, interval=0), es_backend, stop=stop)
    one = next(passes)
    assert (one.found, one.skipped, one.embedded) == (2, 2, 0)
    client.index(index=shop, id="blank", document=_doc(rng, 99, "now it has words"), refresh=True)
    two = next(passes)
    assert (two.found, two.skipped, two.embedded) == (1, 0, 1)
    three = next(passes)
    assert (three.found, three.checked, three.embedded) == (0, 1, 0)  # the one it wrote, read once more
    four = next(passes)
    assert (four.found, four.checked, four.embedded, four.total) == (0, 0, 0, 0)
    stop.set()
    passes.close()
    assert assert_complete(es_backend, shop) == 1


@pytest.mark.es
def test_rewrites_and_deletes_during_a_batch(
    es_backend: Any, shop: str, tiny_encoder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The application rewrites one document and deletes another after sync read them and
    before it writes: the rewrite is not given the old text's vector (409, next pass), the
    deleted one is skipped (404)."""
    client = es_backend.client
    rng = random.Random(2)
    for n in range(40, 46):
        client.index(index=shop, id=f"p{n}", document=_doc(rng, n))
    client.indices.refresh(index=shop)
    real_write = es_sync.write
    calls: list[int] = []

    def app_writes_first(client_: Any, timeout: float, target: Any, batch: Any, vectors: Any) -> Any:
        if not calls:
            client.index(index=shop, id="p41", document=_doc(rng, 41, "rewritten while sync embedded it"))
            client.delete(index=shop, id="p42")
        calls.append(len(batch))
        return real_write(client_, timeout, target, batch, vectors)

    monkeypatch.setattr(es_sync, "write", app_writes_first)
    stats: list[PassStats] = list(sync(SyncJob(index=shop), es_backend))
    assert (stats[0].found, stats[0].embedded, stats[0].conflicts, stats[0].deleted) == (7, 4, 1, 1)
    assert len(stats) == 2 and (stats[1].found, stats[1].embedded, stats[1].conflicts) == (1, 1, 0)
    assert assert_complete(es_backend, shop) == 1
    assert_vector_of(es_backend, shop, tiny_encoder, "p41")
    assert "p42" not in _all(client, shop)


def _application(client: Any, index: str, stop: threading.Event, seed: int, log: list[str]) -> None:
    """Adds documents, rewrites whole ones, changes texts by partial update and deletes, until stopped."""
    rng = random.Random(seed)
    quiet = client.options(ignore_status=404)  # a document it deleted earlier
    n = 1000
    while not stop.is_set():
        action = rng.random()
        target = f"p{rng.randrange(0, 40)}"
        if action < 0.5:
            n += 1
            client.index(index=index, id=f"p{n}", document=_doc(rng, n))
        elif action < 0.7:
            client.index(index=index, id=target, document=_doc(rng, 500))
        elif action < 0.95:
            quiet.update(index=index, id=target, doc={"body": {"content": _text(rng)}}, retry_on_conflict=5)
        elif target != "p0":
            quiet.delete(index=index, id=target)
        log.append(target)
        time.sleep(0.01)


@pytest.mark.es
def test_an_application_writing_during_sync(es_backend: Any, shop: str, tiny_encoder: Any) -> None:
    client = es_backend.client
    stop_app, stop_sync = threading.Event(), threading.Event()
    log: list[str] = []
    seen: list[PassStats] = []
    errors: list[BaseException] = []

    def follow() -> None:
        try:
            seen.extend(sync(SyncJob(index=shop, follow=True, interval=0.2, batch_size=16), es_backend, stop=stop_sync))
        except BaseException as exc:
            errors.append(exc)

    def application() -> None:
        try:
            _application(client, shop, stop_app, 3, log)
        except BaseException as exc:
            errors.append(exc)

    app_thread = threading.Thread(target=application)
    sync_thread = threading.Thread(target=follow)
    app_thread.start()
    sync_thread.start()
    time.sleep(8)
    stop_app.set()
    app_thread.join(timeout=60)
    deadline = time.monotonic() + 60  # then let sync catch up: a pass with nothing left to do
    quiet_from = len(seen)
    while time.monotonic() < deadline and not any(p.total == 0 for p in seen[quiet_from:]) and not errors:
        time.sleep(0.2)
    stop_sync.set()
    sync_thread.join(timeout=60)
    assert not sync_thread.is_alive() and errors == []
    assert len(log) > 100 and sum(p.embedded for p in seen) > 50
    assert sum(p.changed for p in seen) > 0  # partial updates were caught by their hashes
    assert_complete(es_backend, shop)
    docs = _all(client, shop)
    for doc_id in random.Random(4).sample(sorted(i for i in docs if _passage(docs[i])), 10):
        assert_vector_of(es_backend, shop, tiny_encoder, doc_id)


def _bulk_new(client: Any, index: str, count: int) -> None:
    from elasticsearch import helpers

    rng = random.Random(5)
    rows = ({"_index": index, "_id": f"n{n}", "_source": _doc(rng, n)} for n in range(count))
    helpers.bulk(client, rows, refresh=True)


def _cli(es_url: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "HYBRID_ES_URL": es_url}
    return subprocess.Popen(
        [*HYBRID, "sync", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


@pytest.mark.es
def test_kill_9_then_rerun_completes(es_url: str, es_backend: Any, shop: str) -> None:
    client = es_backend.client
    _bulk_new(client, shop, 3000)

    def with_vector() -> int:
        return es_sync.count(client, shop, {"exists": {"field": FIELD}})

    before = with_vector()
    proc = _cli(es_url, "-i", shop, "--batch-size", "8", "--encode-batch", "8", "-q")
    try:
        deadline = time.monotonic() + 120
        while with_vector() == before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    assert before < with_vector() < before + 3000  # stopped half way
    again = _cli(es_url, "-i", shop, "-q")
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert "0 rewritten meanwhile" in out
    assert assert_complete(es_backend, shop) == 1


@pytest.mark.es
def test_follow_ends_on_sigterm_with_status_0(es_url: str, es_backend: Any, shop: str) -> None:
    client = es_backend.client
    proc = _cli(es_url, "-i", shop, "--follow", "--interval", "0.3", "--json", "-q")
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())  # the first pass has ended
        assert first["number"] == 1
        client.index(index=shop, id="late", document=_doc(random.Random(6), 77), refresh=True)
        late = {"bool": {"filter": [{"ids": {"values": ["late"]}}, {"exists": {"field": FIELD}}]}}
        deadline = time.monotonic() + 60
        while not es_sync.count(client, shop, late) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert es_sync.count(client, shop, late) == 1  # embedded by a later pass of the same run
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and len(out.splitlines()) >= 1  # the passes after the first
    assert assert_complete(es_backend, shop) == 1


@pytest.mark.es
def test_hybrids_own_index_and_a_model_swap(
    es_backend: Any, es_prefix: str, beir_small: Path, tiny_model: Path, other_model: Path, shop: str
) -> None:
    # hybrid's own index: another writer adds a document through the alias
    own = f"{es_prefix}-own"
    encoder = Encoder(EncoderConfig(model=str(tiny_model), batch_size=8))
    run_index(IndexJob(corpus=beir_small, index=own), es_backend, encoder)
    client = es_backend.client
    client.index(index=own, id="extra", document={"id": "extra", "title": "Tides", "text": "The moon pulls the ocean."})
    client.indices.refresh(index=own)
    assert missing_count(es_backend, own) == 1
    (stats,) = list(sync(SyncJob(index=own), es_backend))
    assert (stats.found, stats.embedded) == (1, 1) and stats.version == es_backend.current(own)
    client.indices.refresh(index=own)
    assert missing_count(es_backend, own) == 0
    forget_checks(client, str(es_backend.current(own)))
    vector = encoder.encode_passages([Document("extra", "The moon pulls the ocean.", "Tides")])
    score = es_backend.score(own, vector, [["extra"]])
    assert score[0]["extra"] == pytest.approx(1.0, abs=1e-3)

    # the adopted index switches model between two passes of one run: the second follows it
    stop = threading.Event()
    passes = sync(SyncJob(index=shop, follow=True, interval=0), es_backend, stop=stop)
    assert next(passes).version == f"{shop}@{FIELD}"
    fields = SourceFields(text="body.content", title="headline")
    second = Encoder(EncoderConfig(model=str(other_model), batch_size=8))
    job = IndexJob(corpus=None, index=shop, recreate=True)
    run_index(job, es_backend, second, documents=ElasticSource(client, shop, fields))
    client.index(index=shop, id="after-swap", document=_doc(random.Random(7), 88), refresh=True)
    swapped = next(passes)
    stop.set()
    passes.close()
    assert swapped.version == f"{shop}@hybrid_vector_v2" and swapped.embedded == 1
    assert assert_complete(es_backend, shop, "hybrid_vector_v2") == 1
    assert_vector_of(es_backend, shop, second, "after-swap")


@pytest.mark.es
def test_info_says_how_many_vectors_may_be_stale(es_url: str, es_backend: Any, shop: str) -> None:
    """A text changed by a partial update keeps its old vector: hybrid info counts it among
    the documents written since sync last checked, and a sync pass brings that to 0."""
    client = es_backend.client

    def unchecked() -> Any:
        result = runner.invoke(app, ["info", "-i", shop, "--es-url", es_url, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)["extra"].get("may_be_stale")

    assert unchecked() is None  # sync has never checked this field: nothing to compare with
    drawn = runner.invoke(app, ["sync", "-i", shop, "--es-url", es_url])  # with its progress bar
    assert drawn.exit_code == 0, drawn.output
    assert unchecked() == 0
    client.update(index=shop, id="p3", doc={"body": {"content": "an edited text the vector has not seen"}})
    client.indices.refresh(index=shop)
    assert unchecked() == 1
    assert runner.invoke(app, ["sync", "-i", shop, "--es-url", es_url, "-q"]).exit_code == 0
    assert unchecked() == 0
