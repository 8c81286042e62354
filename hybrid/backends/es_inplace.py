"""Vectors added *in place* to an Elasticsearch index a user already has.

``hybrid index --from-es SHOP --in-place`` leaves ``SHOP`` where it is (its applications keep
using the name) and adds hybrid's vectors to it: each version is a ``dense_vector`` field,
``hybrid_vector_v1``, ``hybrid_vector_v2``, …, added to the mapping and filled with partial
updates, so no other field of any document is touched. The index's ``_meta`` records, under
``hybrid_in_place``, where the text lives, which vector field is active, and each field's
recipe (model hash and settings). A refresh fills the next field while searches use the
active one, then flips ``active`` in one mapping update. A version's name is
``SHOP@hybrid_vector_vN``: the readers of :class:`~hybrid.backends.elastic.ElasticBackend`
accept it like an alias or a physical index.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from hybrid.backends import es_bodies as bodies
from hybrid.backends.base import check_compatible, check_vectors
from hybrid.backends.es_bulk import bulk_write
from hybrid.backends.es_hash import HASH_MAPPING, hash_field, text_hash
from hybrid.backends.es_source import pit_pages
from hybrid.backends.locks import ElasticLock
from hybrid.config import IndexSpec
from hybrid.errors import BackendError, ConfigError, CountMismatchError
from hybrid.types import Document

if TYPE_CHECKING:
    from hybrid.backends.elastic import ElasticBackend

log = logging.getLogger(__name__)

META_KEY = "hybrid_in_place"
FIELD_PREFIX = "hybrid_vector_v"


def field_name(number: int) -> str:
    return f"{FIELD_PREFIX}{number}"


def field_number(field: str) -> int | None:
    tail = field.removeprefix(FIELD_PREFIX)
    return int(tail) if field.startswith(FIELD_PREFIX) and tail.isdigit() else None


def version_of(index: str, field: str) -> str:
    """The version name of ``field`` in ``index``: ``index@field``."""
    return f"{index}@{field}"


def split(version: str) -> tuple[str, str] | None:
    """``(index, field)`` of an in-place version name, else ``None``."""
    index, sep, field = version.rpartition("@")
    return (index, field) if sep and index and field_number(field) is not None else None


def read_state(client: Any, index: str) -> dict[str, Any] | None:
    """The ``hybrid_in_place`` record of ``index``, or ``None`` when it was not adopted in place."""
    mapping = client.indices.get_mapping(index=index)
    meta = next(iter(mapping.values()))["mappings"].get("_meta", {})
    state = meta.get(META_KEY)
    return dict(state) if isinstance(state, dict) else None


def write_state(client: Any, index: str, state: dict[str, Any]) -> None:
    """Store ``state`` in ``index``'s ``_meta``, keeping every other key the user has there."""
    mapping = client.indices.get_mapping(index=index)
    meta = dict(next(iter(mapping.values()))["mappings"].get("_meta", {}))
    meta[META_KEY] = state
    client.indices.put_mapping(index=index, meta=meta)


def check_adoptable(client: Any, index: str, text_field: str, title_field: str | None) -> dict[str, Any] | None:
    """Raise :class:`ConfigError` unless ``index`` can take vectors in place: a concrete index
    whose mapping keeps every document whole in ``_source``, adopted before (if it was) with
    the same fields; returns its state (None: not adopted yet). An update rewrites a document
    from its ``_source``: with ``_source`` disabled it fails, and with includes or excludes it
    would silently drop the fields left out, the application's data."""
    if client.indices.exists_alias(name=index):
        raise ConfigError(f"'{index}' is an alias; --in-place adopts a concrete index")
    if not client.indices.exists(index=index):
        raise BackendError(f"index '{index}' not found on the cluster")
    mapping = next(iter(client.indices.get_mapping(index=index).values()))["mappings"]
    source = mapping.get("_source") or {}
    if source.get("enabled") is False or str(source.get("enabled")).lower() == "false":
        why = "its mapping disables _source, so its documents cannot be updated"
    elif source.get("includes") or source.get("excludes"):
        why = "its mapping keeps only part of each document in _source, so an update would drop the rest"
    else:
        why = None
    if why is not None:
        raise ConfigError(
            f"'{index}' cannot be adopted in place: {why}; copy it into a new index instead "
            f"(leave out --in-place: hybrid index --from-es {index} -i NEW_NAME --text-field ...)"
        )
    state = read_state(client, index)
    if state is not None and (state.get("text_field"), state.get("title_field")) != (text_field, title_field):
        raise ConfigError(
            f"'{index}' was adopted with --text-field {state.get('text_field')} and --title-field "
            f"{state.get('title_field')}; use the same fields"
        )
    return state


def adopt(client: Any, index: str, text_field: str, title_field: str | None) -> dict[str, Any]:
    """Mark ``index`` as adopted in place (idempotent); returns its state."""
    state = check_adoptable(client, index, text_field, title_field)
    if state is not None:
        return state
    state = {"text_field": text_field, "title_field": title_field, "active": None, "versions": {}}
    write_state(client, index, state)
    return state


def next_field(state: dict[str, Any]) -> str:
    numbers = [field_number(f) or 0 for f in state.get("versions", {})]
    return field_name(max(numbers, default=0) + 1)


def newest_field(state: dict[str, Any]) -> str | None:
    fields = sorted(state.get("versions", {}), key=lambda f: field_number(f) or 0)
    return fields[-1] if fields else None


class InPlaceWriter:
    """Fills one vector field of an adopted index with partial updates; commit flips ``active``."""

    def __init__(self, backend: ElasticBackend, spec: IndexSpec, index: str, field: str, resumed: bool) -> None:
        self.backend = backend
        self.client = backend.client
        self.spec = spec
        self.index = index
        self.field = field
        self.version = version_of(index, field)
        self.resumed = resumed
        self._written: set[str] = set()
        self.missing = 0
        self.lock: ElasticLock | None = None
        # each vector goes with the hash of its text, so hybrid sync can tell when the text changed
        self.client.indices.put_mapping(index=index, properties={hash_field(field): HASH_MAPPING})
        if resumed:
            self.client.indices.refresh(index=index)

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        found = {i for i in ids if i in self._written}
        rest = [i for i in ids if i not in found]
        if self.resumed and rest:
            query = {"bool": {"filter": [{"ids": {"values": rest}}, {"exists": {"field": self.field}}]}}
            resp = self.client.search(index=self.index, query=query, size=len(rest), source=False)
            found |= {h["_id"] for h in resp["hits"]["hits"]}
        return found

    def write(self, docs: Sequence[Document], vectors: np.ndarray) -> int:
        check_vectors(self.spec, docs, vectors)
        if self.lock is not None:
            self.lock.beat()
        timeout = self.backend.config.request_timeout
        gone: list[str] = []
        written = bulk_write(
            self.client, timeout, self._actions(docs, vectors), len(docs), self.index, missing=gone.append
        )
        self.missing += len(gone)  # deleted by the application since they were read: not an error
        self._written.update(d.id for d in docs if d.id not in set(gone))
        return written

    def _actions(self, docs: Sequence[Document], vectors: np.ndarray) -> Iterator[dict[str, Any]]:
        for doc, vec in zip(docs, vectors, strict=True):
            # a partial update: only this field is added; retry_on_conflict for concurrent app writes
            yield {
                "_op_type": "update",
                "_index": self.index,
                "_id": doc.id,
                "retry_on_conflict": 3,
                "doc": {self.field: vec.tolist(), hash_field(self.field): text_hash(doc)},
            }

    def count(self) -> int:
        self.client.indices.refresh(index=self.index)
        return int(self.client.count(index=self.index, query={"exists": {"field": self.field}})["count"])

    def commit(self, expected: int | None = None) -> int:
        count = self.count()
        if expected is not None:
            expected -= self.missing
        if expected is not None and count != expected:
            raise CountMismatchError(
                f"'{self.version}' holds {count} vectors but {expected} were expected; the active "
                "field was not switched. Re-run the same command to resume"
            )
        state = read_state(self.client, self.index) or {}
        version = dict(state.get("versions", {}).get(self.field, {}))
        version.update(committed=datetime.now(UTC).isoformat(timespec="seconds"), count=count)
        state.setdefault("versions", {})[self.field] = version
        state["active"] = self.field
        write_state(self.client, self.index, state)  # one mapping update: searches switch at once
        self.backend.forget(self.index)
        retire_stale_fields(self.backend, self.index, self.field)
        return count

    def close(self) -> None:
        """Release the write lock."""
        if self.lock is not None:
            self.lock.release()


def drop_field(client: Any, index: str, field: str, timeout: float = 120.0) -> int:
    """Remove ``field``'s vectors from every document of ``index`` (a partial update setting
    it to null: nothing else changes); refuses the active field. Returns documents updated."""
    from hybrid.backends.es_bulk import bulk_write

    state = read_state(client, index) or {}
    if field == state.get("active"):
        raise ConfigError(f"'{field}' is the active vector field of '{index}'; it cannot be dropped")
    if field in state.get("versions", {}):  # readers pinned to it stop using it before it empties
        state["versions"][field]["dropped"] = datetime.now(UTC).isoformat(timespec="seconds")
        write_state(client, index, state)
    ids: list[str] = []
    body = {"size": 1000, "query": {"exists": {"field": field}}, "_source": False}
    for hits in pit_pages(client, index, body, f"index '{index}'"):
        ids.extend(h["_id"] for h in hits)
    actions = (
        {"_op_type": "update", "_index": index, "_id": i, "retry_on_conflict": 3, "doc": {field: None}} for i in ids
    )
    done = bulk_write(client, timeout, actions, len(ids), index, missing=lambda _id: None)
    client.indices.refresh(index=index)
    return done


def retire_stale_fields(backend: ElasticBackend, index: str, keep: str) -> list[str]:
    """Drop the vectors of every field of ``index`` but ``keep`` (the active one) once the
    backend's grace has passed (``backend.retirement``; at once when it is 0), so the documents
    carry at most the active and the previous field's vectors, for a server to switch.

    :meth:`InPlaceWriter.commit` calls it; a caller that switched fields another way (a
    trainer's refresh) may call it too. Returns the fields scheduled."""
    state = read_state(backend.client, index) or {}
    stale = [f for f, v in state.get("versions", {}).items() if f != keep and not v.get("dropped")]

    def drop() -> None:
        for field in stale:
            try:
                dropped = drop_field(backend.client, index, field)
            except Exception as exc:  # a timer thread: the writer has moved on; say so, never crash
                log.warning("could not drop %s from '%s' (hybrid index --drop-old retries): %s", field, index, exc)
                return
            log.info("dropped %s from %d documents of '%s'", field, dropped, index)

    if stale:
        backend.retirement.retire(drop)
    return stale


def open_in_place(backend: ElasticBackend, spec: IndexSpec, state: dict[str, Any], recreate: bool) -> InPlaceWriter:
    """The writer for ``spec`` on an adopted index: resume the newest field, or start the next."""
    client = backend.client
    index = spec.name
    newest = newest_field(state)
    if newest is not None and not recreate:  # the unfinished next field, or more documents for the active one
        check_compatible(spec, state["versions"][newest], index)
        return InPlaceWriter(backend, spec, index, newest, resumed=True)
    field = next_field(state)
    client.indices.put_mapping(index=index, properties={field: bodies.vector_mapping(spec)})
    state.setdefault("versions", {})[field] = {
        "model": spec.model,
        "dims": spec.dims,
        "normalized": spec.normalized,
        "similarity": bodies.es_similarity(spec.normalized),
        "vectors": {
            "es_type": spec.vectors.es_type,
            "m": spec.vectors.m,
            "ef_construction": spec.vectors.ef_construction,
        },
        "recipe": spec.recipe.to_dict() if spec.recipe else None,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "committed": None,
    }
    write_state(client, index, state)
    return InPlaceWriter(backend, spec, index, field, resumed=False)
