from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from hybrid.corpus import JsonlFields, open_corpus, read_answers, read_qrels, read_queries, resolve_corpus
from hybrid.errors import CorpusError, UnknownFormatError
from tests.conftest import FIXTURES


def test_beir_directory_streams_documents(beir_small: Path) -> None:
    reader = open_corpus(beir_small)
    docs = list(reader)
    assert reader.format == "beir"
    assert len(docs) == 12
    assert (docs[0].id, docs[0].title) == ("d1", "Solar power")
    assert docs[0].text.startswith("Photovoltaic panels")


def test_gzip_is_read_by_content_not_name(tmp_path: Path, beir_small: Path) -> None:
    plain = list(open_corpus(beir_small))
    disguised = tmp_path / "docs.jsonl"  # gzip bytes behind a plain name
    disguised.write_bytes(gzip.compress((beir_small / "corpus.jsonl").read_bytes()))
    assert list(open_corpus(disguised)) == plain
    assert list(open_corpus(FIXTURES / "corpus.jsonl.gz")) == plain


def test_msmarco_collection() -> None:
    kind, _ = resolve_corpus(FIXTURES / "msmarco-collection.tsv")
    docs = list(open_corpus(FIXTURES / "msmarco-collection.tsv"))
    assert kind == "msmarco"
    assert (docs[5].id, docs[5].title) == ("5", "")
    assert docs[5].text == "The gravity of the moon causes the ocean tides."


def test_dpr_passages_with_header_and_quotes() -> None:
    kind, _ = resolve_corpus(FIXTURES / "dpr-psgs.tsv")
    docs = list(open_corpus(FIXTURES / "dpr-psgs.tsv"))
    assert kind == "dpr"
    assert len(docs) == 12
    assert docs[0].id == "1" and docs[0].title == "Solar power"
    assert docs[0].text.endswith('He said "hi".')


def test_jsonl_with_configured_fields_keeps_repeated_ids() -> None:
    fields = JsonlFields(id=("doc_key",), title=("heading",), text=("body",))
    docs = list(open_corpus(FIXTURES / "custom.jsonl", fields=fields))
    assert [d.id for d in docs] == ["a", "b", "a"]  # the indexer, not the reader, dedupes
    assert docs[2].title == "A2"


def test_malformed_line_names_file_and_line() -> None:
    path = FIXTURES / "malformed.jsonl"
    with pytest.raises(CorpusError) as err:
        list(open_corpus(path))
    assert str(err.value).startswith(f"{path}:2: malformed JSON")


def test_skip_malformed_counts_lines() -> None:
    reader = open_corpus(FIXTURES / "malformed.jsonl", skip_malformed=True)
    assert [d.id for d in reader] == ["x1", "x4"]
    assert reader.skipped == 2
    assert "no text field" in reader.skipped_examples[1]


def test_msmarco_line_with_wrong_columns(tmp_path: Path) -> None:
    bad = tmp_path / "collection.tsv"
    bad.write_text("1\tok\n2\tmore\textra\n")
    with pytest.raises(CorpusError, match=r"collection.tsv:2: expected 'pid<TAB>passage', found 3 column\(s\)"):
        list(open_corpus(bad))


def test_format_override_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(UnknownFormatError, match="unknown corpus format 'xml'"):
        resolve_corpus(FIXTURES / "custom.jsonl", "xml")
    odd = tmp_path / "docs.data"
    odd.write_text("1\thello\n")
    with pytest.raises(UnknownFormatError, match="pass --format"):
        resolve_corpus(odd)
    assert resolve_corpus(odd, "msmarco") == ("msmarco", odd)


def test_missing_corpus() -> None:
    with pytest.raises(CorpusError, match="corpus not found"):
        resolve_corpus(Path("/nonexistent/corpus.jsonl"))


def test_progress_reports_bytes(beir_small: Path) -> None:
    reader = open_corpus(beir_small)
    it = iter(reader)
    next(it)
    read, total = reader.progress
    assert 0 < read <= total == (beir_small / "corpus.jsonl").stat().st_size


def test_queries_jsonl_tsv_and_dpr(beir_small: Path) -> None:
    assert [q.id for q in read_queries(beir_small / "queries.jsonl")] == ["q1", "q2", "q3", "q4"]
    msm = read_queries(FIXTURES / "msmarco-queries.tsv")
    assert (msm[1].id, msm[1].text) == ("2", "what causes ocean tides")
    dpr = read_queries(FIXTURES / "dpr-qa.tsv")
    assert [(q.id, q.text) for q in dpr] == [("0", "what makes mars red"), ("1", "who makes honey")]
    assert read_answers(FIXTURES / "dpr-qa.tsv") == {"0": ["iron oxide", "rust"], "1": ["bees"]}


def test_qrels_layouts(beir_small: Path) -> None:
    assert read_qrels(beir_small / "qrels" / "test.tsv")["q2"] == {"d6": 1}
    assert read_qrels(FIXTURES / "trec-qrels.txt") == {"1": {"0": 2, "3": 0}, "2": {"5": 3}}
    assert read_qrels(FIXTURES / "msmarco-qrels.txt") == {"1": {"0": 1}, "2": {"5": 1}}
