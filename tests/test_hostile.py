"""Hostile and malformed input: every valid document is indexed, everything else is a clear
error naming file and line, or (with --skip-malformed) a counted skip. Property tests with
hypothesis, a fixed fuzz corpus on both backends, and hostile queries and topic files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hybrid.corpus import read_qrels, read_queries
from hybrid.corpus.readers import JsonlReader
from hybrid.errors import CorpusError
from hybrid.indexing import IndexJob, run_index
from hybrid.search import SearchConfig, Searcher

VALID = [
    {"_id": "plain", "text": "ordinary words about bread"},
    {"_id": "with space", "text": "spaces inside the identifier"},
    {"_id": "a/b\\c?d#e", "text": "slashes and other url characters"},
    {"_id": "ünïcødé-日本-🙂", "text": "unicode identifier"},
    {"_id": "ctrl", "text": "nul \u0000 bell \u0007 and a tab\tinside"},
    {"_id": "big", "text": "megabyte " * 120_000},
    {"_id": "only-title", "title": "a title and no text", "text": ""},
    {"_id": 42, "text": "a numeric identifier"},
    {"_id": "x" * 512, "text": "an identifier of exactly 512 bytes"},
]
INVALID = [
    b"\xff\xfe not utf-8 \xc3\x28",
    json.dumps({"_id": "y" * 513, "text": "too long an id"}).encode(),
    json.dumps({"_id": "empty", "title": "", "text": "  "}).encode(),
    json.dumps({"_id": "obj", "text": {"nested": 1}}).encode(),
    json.dumps({"_id": ["list"], "text": "a list as id"}).encode(),
    b"[" * 100_000 + b"]" * 100_000,
    b"{oops",
    json.dumps({"text": "no identifier"}).encode(),
]


def fuzz_corpus(path: Path) -> Path:
    """A BOM, CRLF endings, the valid documents, a duplicate id and every invalid line."""
    lines = [json.dumps(doc).encode() for doc in VALID]
    lines.insert(3, json.dumps({"_id": "plain", "text": "a duplicate id"}).encode())
    for n, bad in enumerate(INVALID):
        lines.insert(2 * n + 1, bad)
    body = b"\xef\xbb\xbf" + b"\r\n".join(lines) + b"\r\n"
    path.write_bytes(body)
    return path


def test_fuzz_corpus_without_skipping_names_the_first_bad_line(tmp_path: Path) -> None:
    path = fuzz_corpus(tmp_path / "fuzz.jsonl")
    with pytest.raises(CorpusError) as caught:
        list(JsonlReader(path))
    assert f"{path}:2" in str(caught.value) and "UTF-8" in str(caught.value)


def test_fuzz_corpus_on_both_backends(backend_and_name: tuple[Any, str], tiny_encoder: Any, tmp_path: Path) -> None:
    backend, name = backend_and_name
    path = fuzz_corpus(tmp_path / "fuzz.jsonl")
    stats = run_index(IndexJob(corpus=path, index=name, skip_malformed=True, batch_size=4), backend, tiny_encoder)
    assert stats.malformed == len(INVALID)
    assert stats.duplicates == 1
    assert stats.count == len(VALID) == backend.count(name)
    got = backend.get(name, [str(d["_id"]) for d in VALID])
    assert set(got) == {str(d["_id"]) for d in VALID}
    assert got["ünïcødé-日本-🙂"].text == "unicode identifier"
    assert got["plain"].text == "ordinary words about bread"  # the first of a duplicated id wins
    searcher = Searcher(backend, name, tiny_encoder)
    bm25 = searcher.search(["spaces identifier"], SearchConfig(mode="bm25", k=3))[0]
    assert bm25 and bm25[0].id == "with space"
    hits = searcher.search(["slashes url characters"], SearchConfig(mode="hybrid", k=3))[0]
    assert "a/b\\c?d#e" in [h.id for h in hits]


def test_hostile_queries(backend_and_name: tuple[Any, str], tiny_encoder: Any, beir_small: Path) -> None:
    backend, name = backend_and_name
    run_index(IndexJob(corpus=beir_small, index=name), backend, tiny_encoder)
    searcher = Searcher(backend, name, tiny_encoder)
    queries = ["", "   ", "tides " * 20_000, "caf\udce9 \udcff bread", "nul\u0000 ocean", "ocean tides"]
    for mode in ("bm25", "dense", "hybrid"):
        rows = searcher.search(queries, SearchConfig(mode=mode, k=3))  # type: ignore[arg-type]
        assert len(rows) == len(queries)
        assert rows[0] == [] and rows[1] == []  # empty queries: no hits, no error
        assert all(rows[i] for i in range(2, len(queries))), mode  # 100 kB, binary, NUL: answered


def test_topic_files_name_the_bad_line(tmp_path: Path) -> None:
    queries = tmp_path / "queries.tsv"
    queries.write_bytes(b"\xef\xbb\xbfq1\tfirst\r\nq2\tsecond\r\nq3\t\xff\xfe\r\n")
    with pytest.raises(CorpusError, match=r"queries.tsv:3: not valid UTF-8"):
        read_queries(queries)
    queries.write_bytes(b"\xef\xbb\xbfq1\tfirst\r\nq2\tsecond\r\n")
    assert [(q.id, q.text) for q in read_queries(queries)] == [("q1", "first"), ("q2", "second")]
    qrels = tmp_path / "qrels.tsv"
    qrels.write_bytes(b"\xef\xbb\xbfquery-id\tcorpus-id\tscore\r\nq1\td1\t1\r\nq1\td2\tmaybe\r\n")
    with pytest.raises(CorpusError, match=r"qrels.tsv:3: relevance 'maybe' is not a number"):
        read_qrels(qrels)


texts = st.text(st.characters(codec="utf-8"), max_size=60)
ids = st.one_of(texts, st.integers(min_value=-(10**12), max_value=10**12))
documents = st.fixed_dictionaries({"_id": ids, "text": texts}, optional={"title": texts})


@settings(
    max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(docs=st.lists(documents, max_size=8), noise=st.lists(st.binary(max_size=40), max_size=4))
def test_jsonl_reader_properties(tmp_path: Path, docs: list[dict[str, Any]], noise: list[bytes]) -> None:
    """Any mix of documents and random bytes: every valid document comes back as it was,
    every other non-blank line is a counted skip, and nothing else happens."""
    path = tmp_path / "prop.jsonl"
    lines = [json.dumps(d, ensure_ascii=False).encode() for d in docs] + [b.replace(b"\n", b" ") for b in noise]
    body = b"\n".join(lines) + b"\n"
    assume(not body.startswith(b"\x1f\x8b"))  # gzip's magic: read as gzip (a clear error if it is not)
    path.write_bytes(body)
    reader = JsonlReader(path, skip_malformed=True)
    got = list(reader)
    valid = [
        d
        for d in docs
        if str(d["_id"]).strip()
        and len(str(d["_id"]).encode()) <= 512
        and (d["text"].strip() or d.get("title", "").strip())
    ]
    expected = [(str(d["_id"]), d["text"], d.get("title", "")) for d in valid]
    assert [(g.id, g.text, g.title) for g in got][: len(expected)] == expected

    def blank(line: bytes, first: bool) -> bool:
        if first and line.startswith(b"\xef\xbb\xbf"):  # a byte order mark is dropped
            line = line[3:]
        try:
            return not line.decode("utf-8").rstrip("\r\n").strip()
        except UnicodeDecodeError:
            return False

    assert len(got) + reader.skipped == sum(1 for n, line in enumerate(lines) if not blank(line, n == 0))
