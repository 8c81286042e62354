"""Read the documents of an Elasticsearch index a user already has, as a corpus.

``hybrid index --from-es SOURCE`` streams SOURCE with a point in time and ``search_after``
(optionally split into ``slices`` read by parallel threads), maps each hit to a
:class:`~hybrid.types.Document` through dotted field paths (``body.content``), and hands the
stream to the same indexing path as a corpus file. The source index is only read.
Documents without the text field (or without the id field, when the id comes from
``_source``) are counted in ``skipped`` and left out.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from hybrid.errors import BackendError, ConfigError, IndexNotFoundError
from hybrid.types import Document

KEEP_ALIVE = "5m"
SAMPLE = 100  # documents read up front to check that the given fields exist


@dataclass(frozen=True)
class SourceFields:
    """Where id, title and text live in the source documents (dotted paths into _source)."""

    text: str
    title: str | None = None
    id: str = "_id"

    def includes(self) -> list[str]:
        return [f for f in (self.text, self.title, self.id) if f and f != "_id"]


def field_value(source: dict[str, Any], path: str) -> str | None:
    """The text at ``path`` (``a.b.c``; a flat key with dots is found too); lists are joined."""
    if path in source:
        value: Any = source[path]
    else:
        value = source
        for part in path.split("."):
            if isinstance(value, dict) and part in value:
                value = value[part]
            else:
                return None
    if isinstance(value, list):
        parts = [str(v) for v in value if v is not None and not isinstance(v, (dict, list))]
        return " ".join(parts) if parts else None
    if value is None or isinstance(value, dict):
        return None
    return str(value)


def _paths(source: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Every dotted path to a value in ``source`` (objects inside lists are not descended)."""
    for key, value in source.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _paths(value, f"{path}.")
        else:
            yield path


class ElasticSource:
    """The documents of ``index`` on ``client``: iterable, with the corpus reader's counters."""

    def __init__(self, client: Any, index: str, fields: SourceFields, batch: int = 1000, slices: int = 1) -> None:
        if slices < 1 or batch < 1:
            raise ConfigError("--slices and the batch size must be at least 1")
        if not client.indices.exists(index=index):
            raise IndexNotFoundError(f"source index '{index}' not found on the cluster")
        self.client = client
        self.index = index
        self.fields = fields
        self.batch = batch
        self.slices = slices
        self.total = int(client.count(index=index)["count"])
        self.seen = 0
        self.skipped = 0
        self.check_fields()

    def check_fields(self, sample: int = SAMPLE) -> None:
        """Raise :class:`ConfigError` naming the fields that do exist when the text, title or id
        field is in none of the first ``sample`` documents: a misspelt path would otherwise
        skip every document and write nothing."""
        if self.total == 0:
            return
        # hybrid's own vector fields (an index adopted in place) are no candidates and heavy
        page = self.client.search(
            index=self.index, size=sample, sort=["_doc"], track_total_hits=False, source_excludes=["hybrid_vector_*"]
        )
        hits = page["hits"]["hits"]
        sources = [hit.get("_source") or {} for hit in hits]
        wanted = [("--text-field", self.fields.text), ("--title-field", self.fields.title)]
        if self.fields.id != "_id":
            wanted.append(("--id-field", self.fields.id))
        for option, path in wanted:
            if path and not any(field_value(source, path) is not None for source in sources):
                present = sorted({name for source in sources for name in _paths(source)})
                shown = ", ".join(present[:30]) + (", ..." if len(present) > 30 else "") or "none"
                raise ConfigError(
                    f"{option} '{path}' is in none of the {len(sources)} documents sampled from '{self.index}'; "
                    f"the fields they have: {shown}"
                )

    @property
    def progress(self) -> tuple[int, int]:
        """``(documents read, documents in the source)``: drives the same bar as corpus bytes."""
        return self.seen, self.total

    def __iter__(self) -> Iterator[Document]:
        if self.slices == 1:
            for hits in self._pages(None):
                yield from self._documents(hits)
            return
        pages: queue.Queue[list[dict[str, Any]] | BaseException | None] = queue.Queue(maxsize=4 * self.slices)
        stop = threading.Event()

        def read(slice_id: int) -> None:
            try:
                for hits in self._pages(slice_id):
                    if stop.is_set():
                        return
                    pages.put(hits)
            except BaseException as exc:  # handed to the consumer
                pages.put(exc)
            finally:
                pages.put(None)

        threads = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(self.slices)]
        for thread in threads:
            thread.start()
        finished = 0
        try:
            while finished < self.slices:
                item = pages.get()
                if item is None:
                    finished += 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield from self._documents(item)
        finally:
            stop.set()
            while any(t.is_alive() for t in threads):  # unblock readers waiting on a full queue
                with contextlib.suppress(queue.Empty):
                    pages.get_nowait()
                for thread in threads:
                    thread.join(timeout=0.05)

    def _pages(self, slice_id: int | None) -> Iterator[list[dict[str, Any]]]:
        body: dict[str, Any] = {
            "size": self.batch,
            "_source": {"includes": self.fields.includes()},
            "track_total_hits": False,
        }
        if slice_id is not None:
            body["slice"] = {"id": slice_id, "max": self.slices}
        yield from pit_pages(self.client, self.index, body, f"source index '{self.index}'")

    def _documents(self, hits: list[dict[str, Any]]) -> Iterator[Document]:
        for hit in hits:
            self.seen += 1
            source = hit.get("_source") or {}
            text = field_value(source, self.fields.text)
            doc_id = hit["_id"] if self.fields.id == "_id" else field_value(source, self.fields.id)
            if not text or not text.strip() or not doc_id:
                self.skipped += 1
                continue
            title = field_value(source, self.fields.title) if self.fields.title else None
            yield Document(id=doc_id, text=text, title=title or "")


def pit_pages(client: Any, index: str, body: dict[str, Any], what: str) -> Iterator[list[dict[str, Any]]]:
    """Every hit of the search ``body`` on ``index``, a page at a time, over a point in time
    (``search_after`` on ``_shard_doc``: a stable order that scroll would need to hold open).

    Raises:
        BackendError: the point in time cannot be opened (``what`` names what was read).
    """
    import elasticsearch

    try:
        pit = client.open_point_in_time(index=index, keep_alive=KEEP_ALIVE)["id"]
    except elasticsearch.ApiError as exc:
        raise BackendError(f"cannot read {what}: {exc.message}") from None
    after: list[Any] | None = None
    try:
        while True:
            request = {**body, "pit": {"id": pit, "keep_alive": KEEP_ALIVE}, "sort": [{"_shard_doc": "asc"}]}
            if after is not None:
                request["search_after"] = after
            resp = client.search(**request)
            pit = resp.get("pit_id", pit)
            hits = resp["hits"]["hits"]
            if not hits:
                return
            yield hits
            after = hits[-1]["sort"]
    finally:
        with contextlib.suppress(elasticsearch.ApiError):  # it expires by itself otherwise
            client.close_point_in_time(id=pit)
