"""Streaming corpus readers: BEIR, MS MARCO passage tsv, DPR tsv and plain jsonl.

Every reader yields :class:`~hybrid.types.Document` one at a time and never holds the
corpus in memory. A malformed line raises :class:`CorpusError` naming file and line, or,
with ``skip_malformed``, is skipped and counted in ``reader.skipped``. Malformed: not
UTF-8, not parseable, no id or text, an id, text or title that is a JSON object, list or
boolean, an id over 512 UTF-8 bytes (Elasticsearch's limit, kept on both backends) or a
document with neither text nor title. Ids are taken as they are (spaces, slashes, any
Unicode); a byte order mark and CRLF line ends are accepted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hybrid.corpus._io import LineSource
from hybrid.errors import CorpusError
from hybrid.types import Document

DPR_HEADER = ("id", "text", "title")
MAX_ID_BYTES = 512


@dataclass(frozen=True)
class JsonlFields:
    """Which JSON keys hold the id, title and text. Each is a list of candidates, first wins."""

    id: tuple[str, ...] = ("_id", "id", "docid", "doc_id", "pid")
    title: tuple[str, ...] = ("title",)
    text: tuple[str, ...] = ("text", "contents", "body", "passage")


class CorpusReader:
    """Base class: subclasses implement :meth:`_parse` for one line."""

    format = "base"

    def __init__(self, path: Path, *, skip_malformed: bool = False) -> None:
        self.path = path
        self.source = LineSource(path)
        self.skip_malformed = skip_malformed
        self.skipped = 0
        self.skipped_examples: list[str] = []

    @property
    def progress(self) -> tuple[int, int]:
        """(bytes read, total bytes) of the file on disk."""
        return self.source.bytes_read, self.source.total_bytes

    def __iter__(self) -> Iterator[Document]:
        for lineno, line in self.source:
            try:
                if isinstance(line, CorpusError):
                    raise line
                if not line.strip():
                    continue
                doc = self._parse(line, lineno)
                if doc is not None:
                    self._check(doc, lineno)
            except CorpusError as exc:
                if not self.skip_malformed:
                    raise
                self.skipped += 1
                if len(self.skipped_examples) < 5:
                    self.skipped_examples.append(str(exc))
                continue
            if doc is not None:
                yield doc

    def _parse(self, line: str, lineno: int) -> Document | None:
        raise NotImplementedError

    def _check(self, doc: Document, lineno: int) -> None:
        """Rules every backend can keep: an id of at most 512 UTF-8 bytes (Elasticsearch's
        ``_id`` limit) and some text."""
        if len(doc.id.encode("utf-8")) > MAX_ID_BYTES:
            raise self._error(f"id is {len(doc.id.encode('utf-8'))} bytes; the limit is {MAX_ID_BYTES}", lineno)
        if not doc.text.strip() and not doc.title.strip():
            raise self._error("empty document (no text and no title)", lineno)

    def _error(self, message: str, lineno: int) -> CorpusError:
        return CorpusError(message, str(self.path), lineno)


class JsonlReader(CorpusReader):
    """One JSON object a line; ``fields`` says which keys hold id, title and text."""

    format = "jsonl"

    def __init__(self, path: Path, *, fields: JsonlFields | None = None, skip_malformed: bool = False) -> None:
        super().__init__(path, skip_malformed=skip_malformed)
        self.fields = fields or JsonlFields()

    def _parse(self, line: str, lineno: int) -> Document:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise self._error(f"malformed JSON ({exc.msg} at column {exc.colno})", lineno) from exc
        except RecursionError:
            raise self._error("JSON nested too deeply", lineno) from None
        if not isinstance(obj, dict):
            raise self._error("expected a JSON object", lineno)
        doc_id = _first(obj, self.fields.id)
        text = _first(obj, self.fields.text)
        if doc_id is None:
            raise self._error(f"no id field (looked for {', '.join(self.fields.id)})", lineno)
        if text is None:
            raise self._error(f"no text field (looked for {', '.join(self.fields.text)})", lineno)
        title = _first(obj, self.fields.title)
        for label, value in (("id", doc_id), ("text", text), ("title", title)):
            if isinstance(value, (dict, list, bool)):
                raise self._error(f"'{label}' is a JSON {type(value).__name__}; expected a string", lineno)
        if not str(doc_id).strip():
            raise self._error("empty id", lineno)
        return Document(id=str(doc_id), text=str(text), title="" if title is None else str(title))


class MsMarcoReader(CorpusReader):
    """MS MARCO passage ``collection.tsv``: ``pid \\t passage``, no header."""

    format = "msmarco"

    def _parse(self, line: str, lineno: int) -> Document:
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip():
            raise self._error(f"expected 'pid<TAB>passage', found {len(parts)} column(s)", lineno)
        return Document(id=parts[0].strip(), text=parts[1])


class DprReader(CorpusReader):
    """DPR ``psgs_w100.tsv``: a header ``id \\t text \\t title`` then one passage a line."""

    format = "dpr"

    def _parse(self, line: str, lineno: int) -> Document | None:
        parts = line.split("\t")
        if lineno == 1:
            if tuple(p.strip().lower() for p in parts) != DPR_HEADER:
                raise self._error("expected the DPR header 'id<TAB>text<TAB>title'", lineno)
            return None
        if len(parts) != 3 or not parts[0].strip():
            raise self._error(f"expected 'id<TAB>text<TAB>title', found {len(parts)} column(s)", lineno)
        text = parts[1]
        # DPR's tsv quotes passages that contain quotes, csv-style.
        if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
            text = text[1:-1].replace('""', '"')
        return Document(id=parts[0].strip(), text=text, title=parts[2])


def _first(obj: dict[str, object], keys: tuple[str, ...]) -> object | None:
    for key in keys:
        if key in obj and obj[key] is not None:
            return obj[key]
    return None
