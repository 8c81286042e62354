"""Elasticsearch side of ``hybrid sync``: which documents lack a vector or carry a stale one,
and conditional partial updates that write only the vector and its text hash.

A document is *missing* when it lacks the active vector field (``must_not exists``), and
*changed* when its text no longer hashes to the ``F_text_hash`` recorded beside its vector
(see :mod:`hybrid.backends.es_hash`). Finding changed documents needs their text, so only
documents written since the last completed check are read: every write bumps a document's
``_seq_no``, and the highest sequence number of each primary shard before a check began
bounds what that check saw. The bound is kept per index (by uuid, so a recreated index
starts over) and vector field in hybrid's bookkeeping index, so a later run starts from it.

Updates carry ``if_seq_no``/``if_primary_term`` from the read: a document the application
rewrote meanwhile answers 409 and is read again next pass, never overwritten with a vector
of its old text; one deleted meanwhile answers 404 and is skipped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from hybrid.backends import es_inplace as inplace
from hybrid.backends.es_bulk import reason
from hybrid.backends.es_hash import HASH_MAPPING, hash_field, text_hash
from hybrid.backends.es_source import field_value, pit_pages
from hybrid.backends.locks import LOCK_INDEX
from hybrid.errors import BackendError, ConfigError, IndexNotFoundError
from hybrid.types import Document

if TYPE_CHECKING:
    from hybrid.backends.base import Backend

KEEP_ALIVE = "5m"
MISSING, CHANGED = "hybrid_missing", "hybrid_changed"  # named queries: why a hit was returned
NOTHING_SEEN = -1  # below every sequence number: check every document


@dataclass(frozen=True)
class Target:
    """Where an index's active vectors live: the index requests address, the vector field and
    the fields the text is read from, and the recipe that made the vectors."""

    name: str  # what the user called it: an alias of hybrid's own index, or an adopted index
    index: str  # a concrete index: the adopted index, or the physical version behind the alias
    field: str
    text_field: str
    title_field: str | None
    recipe: dict[str, Any] | None

    @property
    def hash_field(self) -> str:
        return hash_field(self.field)

    @property
    def version(self) -> str:
        return inplace.version_of(self.index, self.field) if self.field != "vector" else self.index

    def source_fields(self) -> list[str]:
        return [f for f in (self.text_field, self.title_field, self.hash_field) if f]


def require_elastic(backend: Backend) -> None:
    """Refuse the embedded store: only hybrid writes it, so nothing there lacks a vector."""
    if backend.kind != "elasticsearch":
        raise ConfigError(
            "hybrid sync keeps Elasticsearch indices that other programs write complete; the embedded store "
            "is written only by hybrid index, so it has nothing to sync (give --es-url for a cluster's index)"
        )


def resolve(backend: Backend, name: str) -> Target:
    """The active vector field of ``name`` now (read afresh: a refresh may have switched it).

    Raises:
        ConfigError: the embedded store, or an index that has no hybrid vectors yet.
        IndexNotFoundError: no such index.
    """
    require_elastic(backend)
    client: Any = backend.client  # type: ignore[attr-defined]
    current = backend.current(name)
    if current is None:
        if client.indices.exists(index=name):
            raise ConfigError(
                f"'{name}' has no hybrid vector field yet: adopt it first with "
                f"hybrid index --from-es {name} --in-place --text-field FIELD -i {name}"
            )
        raise IndexNotFoundError(f"index '{name}' not found on the cluster")
    parts = inplace.split(current)
    if parts is not None:
        state = inplace.read_state(client, parts[0]) or {}
        version = state.get("versions", {}).get(parts[1], {})
        return Target(
            name, parts[0], parts[1], str(state["text_field"]), state.get("title_field"), version.get("recipe")
        )
    meta = backend.meta(current)  # type: ignore[attr-defined]
    return Target(name, current, "vector", "text", "title", meta.get("recipe"))


def ensure_hash_mapping(client: Any, target: Target) -> None:
    """Map the text-hash field (indices with ``dynamic: strict`` refuse an unmapped one)."""
    client.indices.put_mapping(index=target.index, properties={target.hash_field: HASH_MAPPING})


def missing_query(target: Target, skipped: Sequence[str] = ()) -> dict[str, Any]:
    """Documents without the active vector, less ``skipped`` (known to have no text)."""
    must_not: list[dict[str, Any]] = [{"exists": {"field": target.field}}]
    if skipped:
        must_not.append({"ids": {"values": list(skipped)}})
    return {"bool": {"must_not": must_not}}


def changed_query(target: Target, after: int, skipped: Sequence[str] = ()) -> dict[str, Any]:
    """Documents with a vector and a text hash written after sequence number ``after``: the
    ones whose text may have changed since their vector was made."""
    query: dict[str, Any] = {
        "bool": {"filter": [{"exists": {"field": target.field}}, {"exists": {"field": target.hash_field}}]}
    }
    if after > NOTHING_SEEN:
        query["bool"]["filter"].append({"range": {"_seq_no": {"gt": after}}})
    if skipped:
        query["bool"]["must_not"] = [{"ids": {"values": list(skipped)}}]
    return query


def pass_query(target: Target, after: int | None, skipped: Sequence[str]) -> dict[str, Any]:
    """Missing documents and, unless ``after`` is None, documents to check for changed text;
    each hit names which (``matched_queries``)."""
    should = [{"bool": {**missing_query(target, skipped)["bool"], "_name": MISSING}}]
    if after is not None:
        should.append({"bool": {**changed_query(target, after, skipped)["bool"], "_name": CHANGED}})
    return {"bool": {"should": should, "minimum_should_match": 1}}


def count(client: Any, index: str, query: dict[str, Any]) -> int:
    return int(client.count(index=index, query=query)["count"])


def max_seq_no(client: Any, index: str) -> int:
    """The lowest, over primary shards, of each shard's highest sequence number: every
    document written after this call has a higher one, whatever shard it lands in (exact
    with one shard; with several, some documents are read again)."""
    stats = client.indices.stats(index=index, level="shards", metric="docs")
    shards = stats["indices"][index]["shards"].values()
    tops = [int(copy["seq_no"]["max_seq_no"]) for copies in shards for copy in copies if copy["routing"]["primary"]]
    return min(tops, default=NOTHING_SEEN)


def _state_id(client: Any, target: Target) -> str:
    settings = client.indices.get_settings(index=target.index, name="index.uuid")
    uuid = next(iter(settings.values()))["settings"]["index"]["uuid"]
    return f"sync:{uuid}:{target.field}"


def load_checked(client: Any, target: Target) -> int:
    """The sequence number up to which ``target``'s texts were last checked (else -1)."""
    import elasticsearch

    try:
        doc = client.get(index=LOCK_INDEX, id=_state_id(client, target))
    except elasticsearch.NotFoundError:
        return NOTHING_SEEN
    return int(doc["_source"].get("checked", NOTHING_SEEN))


def store_checked(client: Any, target: Target, checked: int) -> None:
    """Remember that ``target``'s texts up to ``checked`` match their hashes. Kept beside the
    write locks: hybrid's one bookkeeping index, so a user's index gets no document of ours."""
    import elasticsearch

    with contextlib.suppress(elasticsearch.BadRequestError):  # already there
        client.indices.create(
            index=LOCK_INDEX,
            settings={"number_of_shards": 1, "auto_expand_replicas": "0-1"},
            mappings={"dynamic": False, "properties": {}},
        )
    body = {"index": target.index, "field": target.field, "checked": checked}
    client.index(index=LOCK_INDEX, id=_state_id(client, target), document=body)


def recheck_skipped(client: Any, index: str, skipped: dict[str, tuple[int, int]]) -> None:
    """Forget skipped (text-less) documents that were rewritten or deleted since: a rewrite
    may have given them text."""
    ids = list(skipped)
    for start in range(0, len(ids), 1000):
        resp = client.mget(index=index, ids=ids[start : start + 1000], source=False)
        for doc in resp["docs"]:
            if not doc.get("found") or (doc["_seq_no"], doc["_primary_term"]) != skipped[doc["_id"]]:
                skipped.pop(doc["_id"], None)


def pages(client: Any, target: Target, query: dict[str, Any], size: int) -> Iterator[list[dict[str, Any]]]:
    """Hits of ``query`` over a point in time, ``size`` at a time, with their sequence numbers."""
    body: dict[str, Any] = {
        "size": size,
        "query": query,
        "_source": {"includes": target.source_fields()},
        "seq_no_primary_term": True,
        "track_total_hits": False,
    }
    yield from pit_pages(client, target.index, body, f"index '{target.index}'")


@dataclass(frozen=True)
class Pending:
    """A document to embed, with the version it was read at."""

    doc: Document
    seq_no: int
    primary_term: int
    routing: str | None
    hash: str


def document(target: Target, hit: dict[str, Any]) -> Document | None:
    """The hit as a Document, or ``None`` when its text is missing or blank."""
    source = hit.get("_source") or {}
    text = field_value(source, target.text_field)
    if not text or not text.strip():
        return None
    title = field_value(source, target.title_field) if target.title_field else None
    return Document(id=hit["_id"], text=text, title=title or "")


def pending(hit: dict[str, Any], doc: Document) -> Pending:
    return Pending(doc, int(hit["_seq_no"]), int(hit["_primary_term"]), hit.get("_routing"), text_hash(doc))


def stale(target: Target, hit: dict[str, Any], doc: Document) -> bool:
    """Whether the vector of a hit that has one was made from other text than it holds now."""
    return (hit.get("_source") or {}).get(target.hash_field) != text_hash(doc)


@dataclass
class Written:
    """What became of one batch of conditional updates."""

    written: int = 0
    conflicts: int = 0  # rewritten by the application since it was read: read again next pass
    deleted: int = 0


def write(client: Any, timeout: float, target: Target, batch: Sequence[Pending], vectors: np.ndarray) -> Written:
    """Write the vector and text hash of each document unless it changed since it was read.

    Raises:
        BackendError: the cluster rejected an update for another reason (mapping, dimension).
    """
    from elasticsearch import helpers

    def actions() -> Iterator[dict[str, Any]]:
        for item, vector in zip(batch, vectors, strict=True):
            action: dict[str, Any] = {
                "_op_type": "update",
                "_index": target.index,
                "_id": item.doc.id,
                "if_seq_no": item.seq_no,
                "if_primary_term": item.primary_term,
                "doc": {target.field: vector.tolist(), target.hash_field: item.hash},
            }
            if item.routing is not None:
                action["routing"] = item.routing
            yield action

    out, errors = Written(), []
    for ok, item in helpers.streaming_bulk(
        client.options(request_timeout=timeout),
        actions(),
        chunk_size=200,
        raise_on_error=False,
        raise_on_exception=True,
        max_retries=8,
        initial_backoff=1.0,
        max_backoff=60.0,
    ):
        status = next(iter(item.values())).get("status")
        if ok:
            out.written += 1
        elif status == 409:
            out.conflicts += 1
        elif status == 404:
            out.deleted += 1
        else:
            errors.append(next(iter(item.values())))
    if errors:
        raise BackendError(
            f"{len(errors)} of {len(batch)} vector updates were rejected by '{target.index}'; first: id "
            f"{errors[0].get('_id')}: {reason(errors[0].get('error', {}))}"
        )
    return out
