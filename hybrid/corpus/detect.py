"""Corpus format detection from the path, overridable by the caller."""

from __future__ import annotations

from pathlib import Path

from hybrid.corpus._io import LineSource
from hybrid.corpus.readers import (
    DPR_HEADER,
    CorpusReader,
    DprReader,
    JsonlFields,
    JsonlReader,
    MsMarcoReader,
)
from hybrid.errors import CorpusError, UnknownFormatError

FORMATS: tuple[str, ...] = ("beir", "msmarco", "dpr", "jsonl")

_BEIR_CORPUS = ("corpus.jsonl", "corpus.jsonl.gz")
_MSMARCO_COLLECTION = ("collection.tsv", "collection.tsv.gz")
_DPR_PASSAGES = ("psgs_w100.tsv", "psgs_w100.tsv.gz", "passages.tsv", "passages.tsv.gz")


def resolve_corpus(path: Path, fmt: str | None = None) -> tuple[str, Path]:
    """Return ``(format, corpus file)`` for a file or a dataset directory.

    Raises:
        CorpusError: the path does not exist or holds no corpus file.
        UnknownFormatError: ``fmt`` is not a known format or the format cannot be told.
    """
    if fmt is not None and fmt not in FORMATS:
        raise UnknownFormatError(f"unknown corpus format '{fmt}'; choose one of {', '.join(FORMATS)}")
    if not path.exists():
        raise CorpusError("corpus not found; check the path", str(path))
    if path.is_dir():
        file, detected = _find_in_dir(path)
        return fmt or detected, file
    return fmt or _detect_file(path), path


def open_corpus(
    path: Path,
    fmt: str | None = None,
    *,
    fields: JsonlFields | None = None,
    skip_malformed: bool = False,
) -> CorpusReader:
    """Open a streaming reader for a corpus file or dataset directory."""
    kind, file = resolve_corpus(path, fmt)
    if kind in ("beir", "jsonl"):
        reader: CorpusReader = JsonlReader(file, fields=fields, skip_malformed=skip_malformed)
        reader.format = kind
        return reader
    if kind == "msmarco":
        return MsMarcoReader(file, skip_malformed=skip_malformed)
    return DprReader(file, skip_malformed=skip_malformed)


def _find_in_dir(path: Path) -> tuple[Path, str]:
    for names, kind in ((_BEIR_CORPUS, "beir"), (_MSMARCO_COLLECTION, "msmarco")):
        for name in names:
            if (path / name).is_file():
                return path / name, kind
    for name in _DPR_PASSAGES:
        if (path / name).is_file():
            return path / name, _detect_file(path / name)
    raise CorpusError(
        "no corpus file in this directory; expected corpus.jsonl (BEIR), collection.tsv "
        "(MS MARCO) or psgs_w100.tsv (DPR), or pass the corpus file itself",
        str(path),
    )


def _detect_file(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    if name in ("corpus.jsonl",):
        return "beir"
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if name.endswith((".tsv", ".txt")):
        first = _first_line(path)
        if tuple(p.strip().lower() for p in first.split("\t")) == DPR_HEADER:
            return "dpr"
        return "msmarco"
    raise UnknownFormatError(
        f"cannot tell the corpus format from the file name; pass --format ({', '.join(FORMATS)})",
        str(path),
    )


def _first_line(path: Path) -> str:
    for _, line in LineSource(path).lines():
        return line
    return ""
