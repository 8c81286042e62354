"""Gzip-transparent line reading that tracks position, for progress and error messages."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from hybrid.errors import CorpusError

GZIP_MAGIC = b"\x1f\x8b"
BOM = b"\xef\xbb\xbf"


def is_gzip(path: Path) -> bool:
    """True when the file starts with the gzip magic bytes, whatever its name."""
    with path.open("rb") as fh:
        return fh.read(2) == GZIP_MAGIC


class LineSource:
    """Iterate ``(line_number, line)`` over a text file, gzip or not.

    ``bytes_read`` is the position in the file on disk (compressed bytes for gzip), so
    ``bytes_read / total_bytes`` is a progress fraction without a counting pass.
    """

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise CorpusError("file not found; check the path", str(path))
        self.path = path
        self.total_bytes = path.stat().st_size
        self._raw: IO[bytes] | None = None

    @property
    def bytes_read(self) -> int:
        if self._raw is None or self._raw.closed:
            return 0
        return self._raw.tell()

    def __iter__(self) -> Iterator[tuple[int, str | CorpusError]]:
        """``(line number, text)``; a line that is not UTF-8 comes as a CorpusError in place
        of its text, so a reader may skip it (``--skip-malformed``) and go on. A UTF-8 byte
        order mark at the start is dropped; CRLF endings are accepted."""
        raw = self.path.open("rb")
        self._raw = raw
        try:
            stream: IO[bytes] = gzip.GzipFile(fileobj=raw) if is_gzip(self.path) else raw  # type: ignore[assignment]
            lineno = 0
            try:
                for lineno, data in enumerate(stream, start=1):
                    if lineno == 1 and data.startswith(BOM):
                        data = data[len(BOM) :]
                    try:
                        yield lineno, data.decode("utf-8").rstrip("\r\n")
                    except UnicodeDecodeError as exc:
                        yield lineno, CorpusError(f"not valid UTF-8 ({exc.reason})", str(self.path), lineno)
            except (OSError, EOFError) as exc:
                raise CorpusError(f"cannot read ({exc})", str(self.path), lineno + 1) from exc
        finally:
            raw.close()

    def lines(self) -> Iterator[tuple[int, str]]:
        """Like iterating, but a line that is not UTF-8 raises its CorpusError (small files)."""
        for lineno, line in self:
            if isinstance(line, CorpusError):
                raise line
            yield lineno, line
