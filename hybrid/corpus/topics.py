"""Queries, qrels and DPR-style answers: streamed (``iter_*``) or read whole (``read_*``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from hybrid.corpus._io import LineSource
from hybrid.errors import CorpusError
from hybrid.types import Query

Qrels = dict[str, dict[str, int]]


def read_queries(path: Path) -> list[Query]:
    """All of :func:`iter_queries`, in file order."""
    return list(iter_queries(path))


def iter_queries(path: Path) -> Iterator[Query]:
    """Stream queries from BEIR ``queries.jsonl``, a ``qid<TAB>text`` tsv or a DPR qa file.

    A DPR qa file (``question<TAB>["answer", ...]``) has no ids: the 0-based line number
    is the id, as in pyserini's DPR topics.
    """
    count = 0
    is_json = path.name.lower().removesuffix(".gz").endswith((".jsonl", ".json"))
    for lineno, line in LineSource(path).lines():
        if not line.strip():
            continue
        count += 1
        if is_json:
            yield _json_query(line, path, lineno)
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise CorpusError(f"expected 'qid<TAB>query', found {len(parts)} column(s)", str(path), lineno)
        if _looks_like_answers(parts[1]):
            yield Query(id=str(count - 1), text=parts[0])
        else:
            yield Query(id=parts[0].strip(), text=parts[1])


def read_answers(path: Path) -> dict[str, list[str]]:
    """Read a DPR qa file (``question<TAB>["a", ...]``): query id (line index) -> answers."""
    return dict(iter_answers(path))


def iter_answers(path: Path) -> Iterator[tuple[str, list[str]]]:
    """Stream a DPR qa file's (query id, answers); the id is the 0-based question index."""
    count = 0
    for lineno, line in LineSource(path).lines():
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not _looks_like_answers(parts[1]):
            raise CorpusError("expected 'question<TAB>[\"answer\", ...]'", str(path), lineno)
        yield str(count), [str(a) for a in json.loads(parts[1])]
        count += 1


def read_qrels(path: Path) -> Qrels:
    """Read qrels whole: query id -> document id -> grade (see :func:`iter_qrels`)."""
    qrels: Qrels = {}
    for qid, docid, grade in iter_qrels(path):
        qrels.setdefault(qid, {})[docid] = grade
    return qrels


def iter_qrels(path: Path) -> Iterator[tuple[str, str, int]]:
    """Stream qrels' (query id, document id, grade): TREC (``qid Q0 docid rel``), MS MARCO
    (``qid 0 pid 1``) or BEIR tsv.

    BEIR's header line ``query-id corpus-id score`` is recognised and skipped.
    """
    for lineno, line in LineSource(path).lines():
        parts = line.split()
        if not parts:
            continue
        if lineno == 1 and parts[0].lower() in ("query-id", "qid", "query_id"):
            continue
        if len(parts) == 4:
            qid, docid, rel = parts[0], parts[2], parts[3]
        elif len(parts) == 3:
            qid, docid, rel = parts
        else:
            raise CorpusError(
                f"expected 'qid Q0 docid rel' or 'qid docid rel', found {len(parts)} column(s)",
                str(path),
                lineno,
            )
        try:
            grade = int(float(rel))
        except ValueError as exc:
            raise CorpusError(f"relevance '{rel}' is not a number", str(path), lineno) from exc
        yield qid, docid, grade


def _json_query(line: str, path: Path, lineno: int) -> Query:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CorpusError(f"malformed JSON ({exc.msg})", str(path), lineno) from exc
    qid = obj.get("_id", obj.get("id", obj.get("qid")))
    text = obj.get("text", obj.get("query", obj.get("question")))
    if qid is None or text is None:
        raise CorpusError("a query needs an id (_id/id/qid) and text (text/query)", str(path), lineno)
    return Query(id=str(qid), text=str(text))


def _looks_like_answers(field: str) -> bool:
    field = field.strip()
    if not (field.startswith("[") and field.endswith("]")):
        return False
    try:
        return isinstance(json.loads(field), list)
    except json.JSONDecodeError:
        return False
