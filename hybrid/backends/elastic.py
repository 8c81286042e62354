"""Elasticsearch backend: versioned physical indices behind an alias.

Works with 8.x and 9.x clusters on any license tier: fusion is done client-side, and a
rebuild is "fill a new versioned index, then swap the alias atomically", so nothing needs
``_reindex`` or paid features.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from hybrid.backends import es_bodies as bodies
from hybrid.backends import es_inplace as inplace
from hybrid.backends.base import (
    Retirement,
    check_compatible,
    check_vectors,
    split_version,
    version_name,
    version_number,
)
from hybrid.backends.es_bulk import bulk_write, reason
from hybrid.backends.es_source import field_value
from hybrid.backends.locks import ElasticLock
from hybrid.config import ElasticConfig, IndexSpec
from hybrid.errors import (
    BackendError,
    ClusterUnreachableError,
    CountMismatchError,
    DimensionMismatchError,
    IndexNotFoundError,
)
from hybrid.manifest import VectorRecipe, check_same_vectors
from hybrid.types import Document, Hit, IndexInfo

log = logging.getLogger(__name__)

MSEARCH_CHUNK = 64
DEFAULT_NUM_CANDIDATES = 100
MSEARCH_HITS = 20_000  # hits per multi-search response, at most
SWAP_RETRIES = 2
REJECTED_RETRIES = 8  # per-item 429s inside a multi-search, retried with back-off
REJECTED_BACKOFF_S = 0.1
PAGE_RETRIES = 7  # one page of a full read, while a lost node's shards fail over (~1 min in all)
PAGE_BACKOFF_S = 0.5


def _json_serializer() -> Any:
    """The client's JSON serializer, reading responses with orjson: a multi-search's hits
    parsed by the standard library were a visible share of a served hybrid search's CPU
    outside the encoder. The standard library still reads what orjson would read otherwise:
    a lone surrogate escape in a stored text (orjson refuses it) and an integer of 19 digits
    or more (orjson turns one beyond 64 bits into a float)."""
    import orjson
    from elasticsearch.serializer import JsonSerializer

    long_integer = re.compile(rb"\d{19}")

    class Serializer(JsonSerializer):
        def json_loads(self, data: bytes) -> Any:
            if isinstance(data, bytes) and long_integer.search(data) is None:
                try:
                    return orjson.loads(data)
                except orjson.JSONDecodeError:
                    pass
            return super().json_loads(data)

    return Serializer()


def connect(config: ElasticConfig) -> Any:
    """An ``Elasticsearch`` client for ``config``, checked with a ping-like info call."""
    import elasticsearch

    kwargs: dict[str, Any] = {
        "request_timeout": config.request_timeout,
        "retry_on_timeout": True,
        "max_retries": 3,
        "verify_certs": config.verify_certs,
    }
    if config.api_key:
        kwargs["api_key"] = config.api_key
    if config.username is not None and config.password is not None:
        kwargs["basic_auth"] = (config.username, config.password)
    if config.ca_certs is not None:
        kwargs["ca_certs"] = str(config.ca_certs)
    if config.ssl_fingerprint:
        kwargs["ssl_assert_fingerprint"] = config.ssl_fingerprint.replace(":", "").lower()
    if config.client_cert is not None:
        kwargs["client_cert"] = str(config.client_cert)
    if config.client_key is not None:
        kwargs["client_key"] = str(config.client_key)
    if not config.verify_certs:
        kwargs["ssl_show_warn"] = False  # the CLI says it once, loudly
    client = elasticsearch.Elasticsearch(config.urls, serializers={"application/json": _json_serializer()}, **kwargs)
    try:
        # Not info(): GET / lives in a module some distributions (the integ-test zip) lack.
        # Only a reachability and credentials check: a key scoped to indices gets 403 here
        # (cluster health needs the cluster `monitor` privilege) and that is fine.
        client.options(request_timeout=min(10.0, config.request_timeout)).cluster.health()
    except elasticsearch.AuthorizationException:
        pass
    except elasticsearch.AuthenticationException as exc:
        raise ClusterUnreachableError(
            f"Elasticsearch at {config.display_url} refused the credentials (wrong, expired or revoked); "
            "check the API key or the user and password"
        ) from exc
    except (elasticsearch.ConnectionError, elasticsearch.TransportError) as exc:
        if "CERTIFICATE_VERIFY_FAILED" in str(exc) or "fingerprint" in str(exc).lower():
            raise ClusterUnreachableError(
                f"the TLS certificate of {config.display_url} could not be verified; pass the CA that signed it "
                "with --es-ca-certs (or its SHA-256 with --es-ssl-fingerprint)"
            ) from exc
        if all(u.startswith("http://") for u in config.urls) and "RemoteDisconnected" in _causes(exc):
            # what a node with TLS on does to a plain-HTTP request; also a proxy in front of a
            # node that is still starting
            raise ClusterUnreachableError(
                f"Elasticsearch at {config.display_url} closed the connection without answering: it may "
                "still be starting, or it serves HTTPS (then use https:// in --es-url or HYBRID_ES_URL)"
            ) from exc
        raise ClusterUnreachableError(
            f"cannot reach Elasticsearch at {config.display_url}; check --es-url (or HYBRID_ES_URL) "
            "and that the cluster is running"
        ) from exc
    return client


def _causes(exc: BaseException) -> str:
    """The reprs of ``exc`` and of the exceptions it was raised from, in one string."""
    seen: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(seen) < 10:
        seen.append(repr(current))
        current = current.__cause__ or current.__context__
    return " ".join(seen)


class ElasticBackend:
    """:class:`~hybrid.backends.base.Backend` over an Elasticsearch cluster."""

    kind = "elasticsearch"
    in_process = False

    def __init__(self, config: ElasticConfig, client: Any | None = None) -> None:
        self.config = config
        self.client = client if client is not None else connect(config)
        self._meta_cache: dict[str, _Layout] = {}
        self.rejected_retries = 0  # msearch items the cluster rejected (429) and that were sent again
        self.retirement = Retirement()  # set grace_s to keep a swapped-out version a while

    # -- names and versions -------------------------------------------------
    def current(self, name: str) -> str | None:
        """The version ``name`` points at: the physical index behind the alias ``name``, or
        ``name@hybrid_vector_vN`` for an index adopted in place; ``None`` when there is none."""
        if not self.client.indices.exists_alias(name=name):
            state = self._in_place(name)
            return inplace.version_of(name, state["active"]) if state and state.get("active") else None
        targets = list(self.client.indices.get_alias(name=name).keys())
        if len(targets) != 1:
            raise BackendError(f"alias '{name}' points at {len(targets)} indices; expected one")
        return str(targets[0])

    def _in_place(self, index: str) -> dict[str, Any] | None:
        """The in-place record of a concrete index (``None``: not adopted in place, or absent)."""
        if split_version(index) is not None or not self.client.indices.exists(index=index):
            return None
        return inplace.read_state(self.client, index)

    def versions(self, name: str) -> list[str]:
        """Physical versions of ``name``, oldest first."""
        state = self._in_place(name)
        if state is not None:
            fields = sorted(state.get("versions", {}), key=lambda f: inplace.field_number(f) or 0)
            return [inplace.version_of(name, f) for f in fields]
        found = self.client.indices.get(index=f"{name}-v*", ignore_unavailable=True, allow_no_indices=True)
        named = [(version_number(name, idx), idx) for idx in found]
        return [idx for num, idx in sorted((n, i) for n, i in named if n is not None)]

    def exists(self, name: str) -> bool:
        return self.current(name) is not None

    def _require(self, name: str) -> str:
        physical = self.current(name)
        if physical is None:
            if split_version(name) is not None and self.client.indices.exists(index=name):
                return name  # a version pinned by its physical name
            parts = inplace.split(name)
            if parts is not None:  # a field of an index adopted in place, pinned by name
                state = self._in_place(parts[0]) or {}
                version = state.get("versions", {}).get(parts[1]) or {}
                if version.get("committed") and not version.get("dropped"):
                    return name
                raise IndexNotFoundError(f"version '{name}' not found")
            if self.client.indices.exists(index=name):
                raise BackendError(
                    f"'{name}' is a plain index, not one made by hybrid; adopt it with: hybrid index --from-es "
                    f"{name} --text-field FIELD -i NEW_NAME (or --in-place -i {name})"
                )
            raise IndexNotFoundError(f"index '{name}' not found; create it with: hybrid index CORPUS --index {name}")
        return physical

    def cluster_version(self) -> str:
        """Version of the node(s), e.g. ``9.2.8`` (needs the cluster ``monitor`` privilege)."""
        import elasticsearch

        try:
            nodes = self.client.nodes.info(filter_path="nodes.*.version")["nodes"]
        except elasticsearch.AuthorizationException:
            return "unknown (reading it needs the cluster 'monitor' privilege)"
        return ",".join(sorted({n["version"] for n in nodes.values()}))

    def meta(self, physical: str) -> dict[str, Any]:
        parts = inplace.split(physical)
        if parts is not None:
            state = self._in_place(parts[0]) or {}
            return dict(state.get("versions", {}).get(parts[1], {}))
        mapping = self.client.indices.get_mapping(index=physical)[physical]["mappings"]
        meta: dict[str, Any] = mapping.get("_meta", {}).get("hybrid", {})
        return meta

    def set_query_model(self, name: str, recipe: VectorRecipe) -> None:
        """Record ``recipe`` (the current vectors, a new query model) for the current version:
        a mapping ``_meta`` update, no document is touched."""
        physical = self._require(name)
        parts = inplace.split(physical)
        if parts is not None:
            state = self._in_place(parts[0]) or {}
            version = state.get("versions", {}).get(parts[1], {})
            check_same_vectors(name, VectorRecipe.from_dict(version.get("recipe")), recipe)
            version["recipe"] = recipe.to_dict()
            inplace.write_state(self.client, parts[0], state)
        else:
            mapping = self.client.indices.get_mapping(index=physical)[physical]["mappings"]
            meta = dict(mapping.get("_meta", {}))
            hybrid_meta = dict(meta.get("hybrid", {}))
            check_same_vectors(name, VectorRecipe.from_dict(hybrid_meta.get("recipe")), recipe)
            meta["hybrid"] = {**hybrid_meta, "recipe": recipe.to_dict()}
            self.client.indices.put_mapping(index=physical, meta=meta)
        self.forget(parts[0] if parts else name)
        self._meta_cache.pop(physical, None)

    def version_recipe(self, physical: str) -> dict[str, Any] | None:
        """The recipe a version records now, read afresh (a query model may have been applied);
        what this process cached of the version is dropped when it differs."""
        recipe = self.meta(physical).get("recipe")
        for key, layout in list(self._meta_cache.items()):
            if layout.physical == physical and layout.meta.get("recipe") != recipe:
                self._meta_cache.pop(key, None)
        return dict(recipe) if isinstance(recipe, dict) else None

    # -- writing ------------------------------------------------------------
    def open_writer(
        self, spec: IndexSpec, *, recreate: bool = False, vectors_only: bool = False
    ) -> ElasticWriter | inplace.InPlaceWriter:
        """A new version is a new physical index: its documents are written anew even when
        ``vectors_only`` (an index adopted in place updates only its vector field anyway)."""
        lock = ElasticLock(self.client, spec.name)  # before anything is deleted: one writer at a time
        try:
            writer = self._open_writer(spec, recreate)
        except BaseException:
            lock.release()
            raise
        writer.lock = lock
        return writer

    def _open_writer(self, spec: IndexSpec, recreate: bool) -> ElasticWriter | inplace.InPlaceWriter:
        state = self._in_place(spec.name)
        if state is not None:
            return inplace.open_in_place(self, spec, state, recreate)
        if self.client.indices.exists(index=spec.name) and not self.client.indices.exists_alias(name=spec.name):
            raise BackendError(
                f"'{spec.name}' is a plain index on this cluster; hybrid needs the name for an "
                "alias, so choose another --index"
            )
        current = self.current(spec.name)
        versions = self.versions(spec.name)
        newest = versions[-1] if versions else None
        if current is not None and newest == current and not recreate:
            check_compatible(spec, self.meta(current), spec.name)
        if newest is not None and newest != current and not recreate:
            check_compatible(spec, self.meta(newest), spec.name)
            return ElasticWriter(self, spec, newest, resumed=True)
        if current is not None and newest == current and not recreate:
            return ElasticWriter(self, spec, current, resumed=True)
        for stale in versions:
            if stale != current:
                self.client.indices.delete(index=stale)
        last = version_number(spec.name, newest) if newest else 0
        physical = version_name(spec.name, (last or 0) + 1)
        meta = {
            "model": spec.model,
            "dims": spec.dims,
            "normalized": spec.normalized,
            "similarity": bodies.es_similarity(spec.normalized),
            "lexical": asdict(spec.lexical),
            "vectors": asdict(spec.vectors),
            "recipe": spec.recipe.to_dict() if spec.recipe else None,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self.client.indices.create(index=physical, **bodies.render_index_body(spec, meta))
        return ElasticWriter(self, spec, physical, resumed=False)

    # -- reading ------------------------------------------------------------
    def info(self, name: str) -> IndexInfo:
        layout = self._layout(name)
        physical, meta = layout.physical, layout.meta
        target = inplace.split(physical)[0] if inplace.split(physical) else physical  # type: ignore[index]
        mapping = self.client.indices.get_mapping(index=target)[target]["mappings"]
        in_place = layout.vector_field != "vector"
        # Documents another writer added (to a user's index adopted in place, or through the
        # alias of hybrid's own) have no vector until hybrid sync embeds them.
        unembedded = {"without_vector": self._without_vector(layout)}
        return IndexInfo(
            name=name,
            backend=self.kind,
            count=self.count(name),
            dims=int(meta.get("dims", 0)),
            model=str(meta.get("model", "?")),
            version=physical,
            similarity=str(meta.get("similarity", "?")),
            extra={
                "mapping": mapping,
                "cluster_version": self.cluster_version(),
                "lexical": meta.get("lexical", {}),
                "vectors": meta.get("vectors", {}),
                "in_place": in_place,
                **unembedded,
            },
            recipe=meta.get("recipe"),
        )

    def count(self, name: str) -> int:
        layout = self._layout(name)
        if layout.vector_field != "vector":  # adopted in place: the documents this version embedded
            query = {"exists": {"field": layout.vector_field}}
            return int(self.client.count(index=layout.index, query=query)["count"])
        return int(self.client.count(index=name)["count"])

    def _without_vector(self, layout: _Layout) -> int:
        """Documents the version's active vector field leaves out (see :func:`hybrid.sync.missing_count`)."""
        query = {"bool": {"must_not": [{"exists": {"field": layout.vector_field}}]}}
        return int(self.client.count(index=layout.index, query=query)["count"])

    def _layout(self, name: str) -> _Layout:
        """Where ``name``'s current version keeps text and vectors, cached per name (searches
        address the alias itself; a swap is noticed from the hits, see ``_msearch_chunk``)."""
        cached = self._meta_cache.get(name)
        if cached is None:
            physical = self._require(name)
            parts = inplace.split(physical)
            if parts is None:
                cached = _Layout(index=name, physical=physical, meta=self.meta(physical))
            else:
                state = self._in_place(parts[0]) or {}
                text, title = str(state["text_field"]), state.get("title_field")
                fields = tuple(f for f in (title, text) if f)
                cached = _Layout(
                    index=parts[0],
                    physical=physical,
                    meta=dict(state["versions"][parts[1]]),
                    vector_field=parts[1],
                    text_field=text,
                    title_field=title,
                    bm25_fields=fields,
                    source=fields,
                    id_field=None,
                )
            self._meta_cache[name] = cached
        return cached

    def forget(self, index: str) -> None:
        """Drop cached layouts that address ``index`` (after its active version changed)."""
        for key, layout in list(self._meta_cache.items()):
            if key == index or layout.index == index:
                self._meta_cache.pop(key, None)

    def bm25(self, name: str, queries: Sequence[str], k: int, *, texts: bool = True) -> list[list[Hit]]:
        return self._msearch(name, self._bm25_bodies(name, queries, k, texts), None)

    def knn(
        self, name: str, vectors: np.ndarray, k: int, num_candidates: int | None = None, *, texts: bool = True
    ) -> list[list[Hit]]:
        body = self._knn_bodies(name, vectors, k, num_candidates, texts)
        return self._msearch(name, body, self._layout(name).similarity)

    def bm25_and_knn(
        self, name: str, queries: Sequence[str], vectors: np.ndarray, k: int, num_candidates: int | None = None
    ) -> tuple[list[list[Hit]], list[list[Hit]]]:
        """Both sides of hybrid searches in one multi-search, which the node runs in parallel
        (ids and scores only)."""
        lexical = self._bm25_bodies(name, queries, k, False)
        dense = self._knn_bodies(name, vectors, k, num_candidates, False)
        similarities = [None] * len(lexical) + [self._layout(name).similarity] * len(dense)
        hits = self._msearch(name, lexical + dense, similarities)
        return hits[: len(lexical)], hits[len(lexical) :]

    def _bm25_bodies(self, name: str, queries: Sequence[str], k: int, texts: bool) -> list[dict[str, Any]]:
        layout = self._layout(name)
        source = layout.source if texts else ()
        return [bodies.bm25_body(q, k, layout.bm25_fields, source, layout.id_field) for q in queries]

    def _knn_bodies(
        self, name: str, vectors: np.ndarray, k: int, num_candidates: int | None, texts: bool
    ) -> list[dict[str, Any]]:
        layout = self._layout(name)
        meta = layout.meta
        dims = int(meta.get("dims") or vectors.shape[1])
        if vectors.shape[1] != dims:
            raise DimensionMismatchError(
                f"query vectors have {vectors.shape[1]} dimensions but index '{name}' holds "
                f"{dims}-d vectors from {meta.get('model')}; search with that model"
            )
        nc = max(k, num_candidates or DEFAULT_NUM_CANDIDATES)
        source = layout.source if texts else ()
        return [bodies.knn_body(v, k, nc, layout.vector_field, source, layout.id_field) for v in vectors]

    def _msearch(
        self, name: str, body: list[dict[str, Any]], similarity: str | list[str | None] | None
    ) -> list[list[Hit]]:
        """Multi-search the alias in chunks; a chunk that fails during a version swap is retried.

        ``similarity``: the kNN similarity whose score transform ES applied (None for BM25),
        for every item or one per item."""
        similarities = similarity if isinstance(similarity, list) else [similarity] * len(body)
        results: list[list[Hit]] = []
        size = max((int(b.get("size", 10)) for b in body), default=10)
        step = max(1, min(MSEARCH_CHUNK, MSEARCH_HITS // size))  # bound response size for deep runs
        for start in range(0, len(body), step):
            chunk = body[start : start + step]
            for attempt in range(SWAP_RETRIES + 1):
                try:
                    results.extend(self._msearch_chunk(name, chunk, similarities[start : start + step]))
                    break
                except BackendError:
                    # The alias may have moved and the old version been deleted mid-request.
                    self._meta_cache.pop(name, None)
                    if attempt == SWAP_RETRIES:
                        raise
                    self._layout(name)
        return results

    def _msearch_chunk(self, name: str, chunk: list[dict[str, Any]], similarities: list[str | None]) -> list[list[Hit]]:
        """One multi-search; items the cluster rejected as overloaded (429) are sent again after
        an exponential back-off and with less concurrency, instead of failing the request."""
        import elasticsearch

        layout = self._meta_cache.get(name)
        target = layout.index if layout is not None else name
        current = layout.physical if layout is not None and layout.vector_field == "vector" else None
        out: list[list[Hit] | None] = [None] * len(chunk)
        pending = list(range(len(chunk)))
        for attempt in range(REJECTED_RETRIES + 1):
            try:
                lines = bodies.msearch_lines(target, [chunk[i] for i in pending])
                # a retry runs the rejected items with less concurrency, down to one at a time
                calmer = {"max_concurrent_searches": max(1, 8 >> attempt)} if attempt else {}
                resp = self.client.msearch(searches=bodies.encoded(lines), **calmer)
            except elasticsearch.NotFoundError as exc:
                raise BackendError(f"search failed on '{name}': {exc}") from exc
            rejected = []
            for i, item in zip(pending, resp["responses"], strict=True):
                if "error" in item:
                    if _rejected(item) and attempt < REJECTED_RETRIES:
                        rejected.append(i)
                        continue
                    raise BackendError(f"search failed on '{name}': {reason(item['error'])}")
                if item.get("_shards", {}).get("failed"):
                    raise BackendError(f"search on '{name}' had failed shards: {item['_shards']}")
                hits = item["hits"]["hits"]
                if hits and current is not None and hits[0].get("_index") != current:
                    self._meta_cache.pop(name, None)  # served by a newer version: reload its metadata
                out[i] = [_hit(h, similarities[i], layout) for h in hits]
            if not rejected:
                break
            self.rejected_retries += len(rejected)
            time.sleep(min(REJECTED_BACKOFF_S * 2**attempt, 10.0))
            pending = rejected
        return [hits if hits is not None else [] for hits in out]

    def score(self, name: str, vectors: np.ndarray, ids: Sequence[Sequence[str]]) -> list[dict[str, float]]:
        """Exact scores through a kNN search filtered to the ids.

        With num_candidates no smaller than the filter, Lucene searches the filtered
        documents exhaustively, so this is exact for float vectors (quantized index options
        give their quantized similarity). Vectors are not kept in _source, so they cannot be
        fetched and scored locally.
        """
        layout = self._layout(name)
        similarity = layout.similarity
        bodies_ = []
        for vector, group in zip(vectors, ids, strict=True):
            body = bodies.knn_body(vector, max(1, len(group)), max(1, len(group)), layout.vector_field)
            body["knn"]["filter"] = {"ids": {"values": list(group)}}
            body["_source"] = False
            bodies_.append(body)
        hits = self._msearch(name, bodies_, similarity)
        return [{h.id: h.score for h in row} for row in hits]

    def get(self, name: str, ids: Sequence[str]) -> dict[str, Document]:
        layout = self._layout(name)
        if not ids:
            return {}
        resp = self.client.mget(index=layout.index, ids=list(ids), source=list(layout.source))
        out: dict[str, Document] = {}
        for doc in resp["docs"]:
            if doc.get("found"):
                hit = _hit({**doc, "_score": 0.0}, None, layout)
                out[doc["_id"]] = Document(id=doc["_id"], text=hit.text or "", title=hit.title or "")
        return out

    def iter_documents(self, name: str, batch: int = 1000) -> Iterator[list[Document]]:
        """Every document of the current version, in batches (stateless pages of one version)."""
        layout = self._layout(name)
        if layout.vector_field != "vector":  # adopted in place: the documents that have text
            from hybrid.backends.es_source import ElasticSource, SourceFields

            fields = SourceFields(text=layout.text_field, title=layout.title_field)
            out_: list[Document] = []
            for doc in ElasticSource(self.client, layout.index, fields, batch=batch):
                out_.append(doc)
                if len(out_) >= batch:
                    yield out_
                    out_ = []
            if out_:
                yield out_
            return
        after: list[Any] | None = None
        while True:
            # Stateless pages in `id` order: no scroll or point-in-time context lives on one
            # node, so a node that leaves mid-read costs a retried page, not the whole read.
            body: dict[str, Any] = {
                "query": {"match_all": {}},
                "sort": [{"id": "asc"}],
                "size": batch,
                "source": bodies.SOURCE_FIELDS,
                "track_total_hits": False,
            }
            if after is not None:
                body["search_after"] = after
            hits = self._page(layout.physical, body)
            if not hits:
                return
            yield [
                Document(id=h["_id"], text=h["_source"].get("text", ""), title=h["_source"].get("title", ""))
                for h in hits
            ]
            after = hits[-1]["sort"]

    def _page(self, physical: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        """One page of a full read, retried with back-off while the cluster recovers from a
        lost node (connection errors, 5xx, or shards not yet answering: a partial page would
        silently drop documents)."""
        import elasticsearch

        problem = ""
        for attempt in range(PAGE_RETRIES + 1):
            try:
                resp = self.client.search(index=physical, **body)
                shards = resp.get("_shards", {})
                if not shards.get("failed"):
                    return list(resp["hits"]["hits"])
                problem = f"{shards['failed']} of {shards.get('total')} shards failed"
            except elasticsearch.NotFoundError as exc:
                raise BackendError(f"version '{physical}' went away while it was being read: {reason(exc)}") from exc
            except (elasticsearch.ConnectionError, elasticsearch.ConnectionTimeout) as exc:
                problem = f"no node answered ({exc})"
            except elasticsearch.ApiError as exc:
                if exc.meta.status < 500:
                    raise
                problem = reason(exc)
            if attempt < PAGE_RETRIES:
                time.sleep(min(PAGE_BACKOFF_S * 2**attempt, 15.0))
        raise BackendError(f"reading '{physical}' failed after {PAGE_RETRIES + 1} tries: {problem}")

    def drop(self, name: str) -> None:
        self.forget(name)
        if self._in_place(name) is not None:
            # never delete a user's index: forget it was adopted (its vector fields stay in the mapping)
            mapping = self.client.indices.get_mapping(index=name)[name]["mappings"]
            meta = {k: v for k, v in mapping.get("_meta", {}).items() if k != inplace.META_KEY}
            self.client.indices.put_mapping(index=name, meta=meta)
            return
        for physical in self.versions(name):
            self.client.indices.delete(index=physical)

    def release(self, physical: str) -> None:
        """Forget a pinned version's cached layout (nothing is held open on a cluster)."""
        self._meta_cache.pop(physical, None)

    def close(self) -> None:
        self.retirement.wait()
        self.client.close()


class ElasticWriter:
    """Bulk writer into one physical version; ``commit`` swaps the alias to it."""

    def __init__(self, backend: ElasticBackend, spec: IndexSpec, physical: str, resumed: bool) -> None:
        self.backend = backend
        self.client = backend.client
        self.spec = spec
        self.version = physical
        self.resumed = resumed
        self._written = 0
        self.lock: ElasticLock | None = None

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        if not ids:
            return set()
        # mget is real-time: it sees documents written before the last refresh.
        resp = self.client.mget(index=self.version, ids=list(ids), source=False)
        return {d["_id"] for d in resp["docs"] if d.get("found")}

    def write(self, docs: Sequence[Document], vectors: np.ndarray) -> int:
        check_vectors(self.spec, docs, vectors)
        if self.lock is not None:
            self.lock.beat()
        timeout = self.backend.config.request_timeout
        written = bulk_write(self.client, timeout, self._actions(docs, vectors), len(docs), self.version)
        self._written += written
        return written

    def _actions(self, docs: Sequence[Document], vectors: np.ndarray) -> Iterator[dict[str, Any]]:
        for doc, vec in zip(docs, vectors, strict=True):
            yield {
                "_op_type": "index",
                "_index": self.version,
                "_id": doc.id,
                "_source": {"id": doc.id, "title": doc.title, "text": doc.text, "vector": vec.tolist()},
            }

    def count(self) -> int:
        self.client.indices.refresh(index=self.version)
        return int(self.client.count(index=self.version)["count"])

    def commit(self, expected: int | None = None) -> int:
        indices = self.client.indices
        indices.put_settings(
            index=self.version, settings={"index": {"refresh_interval": bodies.restored_refresh_interval()}}
        )
        count = self.count()
        if expected is not None and count != expected:
            raise CountMismatchError(
                f"'{self.version}' holds {count} documents but {expected} were expected; the "
                "alias was not switched. Re-run the same command to resume"
            )
        name = self.spec.name
        old = self.backend.current(name)
        actions: list[dict[str, Any]] = [{"add": {"index": self.version, "alias": name}}]
        if old is not None and old != self.version:
            actions.insert(0, {"remove": {"index": old, "alias": name}})
        indices.update_aliases(actions=actions)  # one atomic step: searches never miss
        self.backend._meta_cache.pop(name, None)
        stale = [v for v in self.backend.versions(name) if v != self.version]
        if stale:
            self.backend.retirement.retire(lambda: indices.delete(index=",".join(stale), ignore_unavailable=True))
        return count

    def close(self) -> None:
        """Release the write lock (the client belongs to the backend)."""
        if self.lock is not None:
            self.lock.release()


@dataclass(frozen=True)
class _Layout:
    """Where one version keeps its text and vectors: hybrid's own index (behind an alias), or
    a user's index adopted in place (their text fields, a ``hybrid_vector_vN`` field)."""

    index: str  # what requests address: the alias, a physical version, or the adopted index
    physical: str  # the version: ``name-v000001`` or ``index@hybrid_vector_vN``
    meta: dict[str, Any]
    vector_field: str = "vector"
    text_field: str = "text"
    title_field: str | None = "title"
    bm25_fields: tuple[str, ...] = ("contents",)
    source: tuple[str, ...] = tuple(bodies.SOURCE_FIELDS)
    id_field: str | None = "id"  # a keyword copy of ``_id`` (hybrid's own indices; not adopted ones)

    @property
    def similarity(self) -> str:
        return str(self.meta.get("similarity", "dot_product"))


def _hit(raw: dict[str, Any], similarity: str | None, layout: _Layout | None = None) -> Hit:
    score = float(raw["_score"])
    if similarity is not None:
        score = bodies.similarity_from_es_score(score, similarity)
    doc_id = raw.get("_id") or (raw.get("fields", {}).get(layout.id_field if layout else "id") or [None])[0]
    if doc_id is None:
        raise BackendError(f"a hit from {raw.get('_index')} carries no document id; its 'id' field is empty")
    src = raw.get("_source")
    if not src:  # ids and scores only (the sides of a hybrid search): nothing to look up
        return Hit(id=doc_id, score=score)
    text_field = layout.text_field if layout else "text"
    title_field = layout.title_field if layout else "title"
    title = field_value(src, title_field) if title_field else None
    return Hit(id=doc_id, score=score, title=title, text=field_value(src, text_field))


def _rejected(item: dict[str, Any]) -> bool:
    """A multi-search item the cluster refused for load (429, or a search phase whose shards
    were all rejected by a full thread pool), worth sending again later."""
    if item.get("status") == 429:
        return True
    return "rejected execution" in json.dumps(item.get("error", {})) or "es_rejected_execution_exception" in json.dumps(
        item.get("error", {})
    )
