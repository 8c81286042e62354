"""Elasticsearch backend: versioned physical indices behind an alias.

Works with 8.x and 9.x clusters on any license tier: fusion is done client-side, and a
rebuild is "fill a new versioned index, then swap the alias atomically", so nothing needs
``_reindex`` or paid features.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import numpy as np

from hybrid.backends import es_bodies as bodies
from hybrid.backends.base import check_vectors, split_version, version_name, version_number
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

BULK_CHUNK = 200  # vectors make documents large: keep bulk requests a few MB
MSEARCH_CHUNK = 64
DEFAULT_NUM_CANDIDATES = 100
MSEARCH_HITS = 20_000  # hits per multi-search response, at most
SWAP_RETRIES = 2


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
    client = elasticsearch.Elasticsearch(config.url, **kwargs)
    try:
        # Not info(): GET / lives in a module some distributions (the integ-test zip) lack.
        client.options(request_timeout=min(10.0, config.request_timeout)).cluster.health()
    except elasticsearch.AuthenticationException as exc:
        raise ClusterUnreachableError(
            f"Elasticsearch at {config.url} refused the credentials; check --es-api-key or --es-user/--es-password"
        ) from exc
    except (elasticsearch.ConnectionError, elasticsearch.TransportError) as exc:
        raise ClusterUnreachableError(
            f"cannot reach Elasticsearch at {config.url}; check --es-url (or HYBRID_ES_URL) "
            "and that the cluster is running"
        ) from exc
    return client


class ElasticBackend:
    """:class:`~hybrid.backends.base.Backend` over an Elasticsearch cluster."""

    kind = "elasticsearch"

    def __init__(self, config: ElasticConfig, client: Any | None = None) -> None:
        self.config = config
        self.client = client if client is not None else connect(config)
        self._meta_cache: dict[str, dict[str, Any]] = {}

    # -- names and versions -------------------------------------------------
    def current(self, name: str) -> str | None:
        """The physical index the alias ``name`` points at, or ``None``."""
        if not self.client.indices.exists_alias(name=name):
            return None
        targets = list(self.client.indices.get_alias(name=name).keys())
        if len(targets) != 1:
            raise BackendError(f"alias '{name}' points at {len(targets)} indices; expected one")
        return str(targets[0])

    def versions(self, name: str) -> list[str]:
        """Physical versions of ``name``, oldest first."""
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
            if self.client.indices.exists(index=name):
                raise BackendError(
                    f"'{name}' is a plain index, not one made by hybrid; index a corpus under another name"
                )
            raise IndexNotFoundError(f"index '{name}' not found; create it with: hybrid index CORPUS --index {name}")
        return physical

    def cluster_version(self) -> str:
        """Version of the node(s), e.g. ``9.2.8``."""
        nodes = self.client.nodes.info(filter_path="nodes.*.version")["nodes"]
        return ",".join(sorted({n["version"] for n in nodes.values()}))

    def meta(self, physical: str) -> dict[str, Any]:
        mapping = self.client.indices.get_mapping(index=physical)[physical]["mappings"]
        meta: dict[str, Any] = mapping.get("_meta", {}).get("hybrid", {})
        return meta

    # -- writing ------------------------------------------------------------
    def open_writer(self, spec: IndexSpec, *, recreate: bool = False) -> ElasticWriter:
        if self.client.indices.exists(index=spec.name) and not self.client.indices.exists_alias(name=spec.name):
            raise BackendError(
                f"'{spec.name}' is a plain index on this cluster; hybrid needs the name for an "
                "alias, so choose another --index"
            )
        current = self.current(spec.name)
        versions = self.versions(spec.name)
        newest = versions[-1] if versions else None
        if current is not None and newest == current and not recreate:
            _check_compatible(spec, self.meta(current), spec.name)
        if newest is not None and newest != current and not recreate:
            _check_compatible(spec, self.meta(newest), spec.name)
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
        physical = self._require(name)
        meta = self.meta(physical)
        mapping = self.client.indices.get_mapping(index=physical)[physical]["mappings"]
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
            },
            recipe=meta.get("recipe"),
        )

    def count(self, name: str) -> int:
        self._search_meta(name)
        return int(self.client.count(index=name)["count"])

    def _search_meta(self, name: str) -> dict[str, Any]:
        """The current version's metadata, cached per alias (searches hit the alias itself)."""
        cached = self._meta_cache.get(name)
        if cached is None:
            physical = self._require(name)
            cached = {**self.meta(physical), "physical": physical}
            self._meta_cache[name] = cached
        return cached

    def bm25(self, name: str, queries: Sequence[str], k: int) -> list[list[Hit]]:
        self._search_meta(name)
        return self._msearch(name, [bodies.bm25_body(q, k) for q in queries], None)

    def knn(self, name: str, vectors: np.ndarray, k: int, num_candidates: int | None = None) -> list[list[Hit]]:
        meta = self._search_meta(name)
        dims = int(meta.get("dims") or vectors.shape[1])
        if vectors.shape[1] != dims:
            raise DimensionMismatchError(
                f"query vectors have {vectors.shape[1]} dimensions but index '{name}' holds "
                f"{dims}-d vectors from {meta.get('model')}; search with that model"
            )
        nc = max(k, num_candidates or DEFAULT_NUM_CANDIDATES)
        body = [bodies.knn_body(v, k, nc) for v in vectors]
        return self._msearch(name, body, str(meta.get("similarity", "dot_product")))

    def _msearch(self, name: str, body: list[dict[str, Any]], similarity: str | None) -> list[list[Hit]]:
        """Multi-search the alias in chunks; a chunk that fails during a version swap is retried."""
        results: list[list[Hit]] = []
        size = max((int(b.get("size", 10)) for b in body), default=10)
        step = max(1, min(MSEARCH_CHUNK, MSEARCH_HITS // size))  # bound response size for deep runs
        for start in range(0, len(body), step):
            chunk = body[start : start + step]
            for attempt in range(SWAP_RETRIES + 1):
                try:
                    results.extend(self._msearch_chunk(name, chunk, similarity))
                    break
                except BackendError:
                    # The alias may have moved and the old version been deleted mid-request.
                    self._meta_cache.pop(name, None)
                    if attempt == SWAP_RETRIES:
                        raise
                    self._search_meta(name)
        return results

    def _msearch_chunk(self, name: str, chunk: list[dict[str, Any]], similarity: str | None) -> list[list[Hit]]:
        import elasticsearch

        try:
            resp = self.client.msearch(searches=bodies.msearch_lines(name, chunk))
        except elasticsearch.NotFoundError as exc:
            raise BackendError(f"search failed on '{name}': {exc}") from exc
        out = []
        current = self._meta_cache.get(name, {}).get("physical")
        for item in resp["responses"]:
            if "error" in item:
                raise BackendError(f"search failed on '{name}': {_reason(item['error'])}")
            if item.get("_shards", {}).get("failed"):
                raise BackendError(f"search on '{name}' had failed shards: {item['_shards']}")
            hits = item["hits"]["hits"]
            if hits and hits[0].get("_index") != current:
                self._meta_cache.pop(name, None)  # served by a newer version: reload its metadata
            out.append([_hit(h, similarity) for h in hits])
        return out

    def score(self, name: str, vectors: np.ndarray, ids: Sequence[Sequence[str]]) -> list[dict[str, float]]:
        """Exact scores through a kNN search filtered to the ids.

        With num_candidates no smaller than the filter, Lucene searches the filtered
        documents exhaustively, so this is exact for float vectors (quantized index options
        give their quantized similarity). Vectors are not kept in _source, so they cannot be
        fetched and scored locally.
        """
        similarity = str(self._search_meta(name).get("similarity", "dot_product"))
        bodies_ = []
        for vector, group in zip(vectors, ids, strict=True):
            body = bodies.knn_body(vector, max(1, len(group)), max(1, len(group)))
            body["knn"]["filter"] = {"ids": {"values": list(group)}}
            body["_source"] = False
            bodies_.append(body)
        hits = self._msearch(name, bodies_, similarity)
        return [{h.id: h.score for h in row} for row in hits]

    def get(self, name: str, ids: Sequence[str]) -> dict[str, Document]:
        self._search_meta(name)
        if not ids:
            return {}
        resp = self.client.mget(index=name, ids=list(ids), source=bodies.SOURCE_FIELDS)
        out: dict[str, Document] = {}
        for doc in resp["docs"]:
            if doc.get("found"):
                src = doc["_source"]
                out[doc["_id"]] = Document(id=doc["_id"], text=src.get("text", ""), title=src.get("title", ""))
        return out

    def iter_documents(self, name: str, batch: int = 1000) -> Iterator[list[Document]]:
        """Every document of the current version, in batches (a scroll over one version)."""
        from elasticsearch import helpers

        physical = self._require(name)
        out: list[Document] = []
        for hit in helpers.scan(
            self.client,
            index=physical,
            query={"query": {"match_all": {}}},
            _source=bodies.SOURCE_FIELDS,
            size=batch,
            preserve_order=False,
        ):
            src = hit["_source"]
            out.append(Document(id=hit["_id"], text=src.get("text", ""), title=src.get("title", "")))
            if len(out) >= batch:
                yield out
                out = []
        if out:
            yield out

    def drop(self, name: str) -> None:
        self._meta_cache.pop(name, None)
        for physical in self.versions(name):
            self.client.indices.delete(index=physical)

    def release(self, physical: str) -> None:
        """Forget a pinned version's cached metadata (nothing is held open on a cluster)."""
        self._meta_cache.pop(physical, None)

    def close(self) -> None:
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

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        if not ids:
            return set()
        # mget is real-time: it sees documents written before the last refresh.
        resp = self.client.mget(index=self.version, ids=list(ids), source=False)
        return {d["_id"] for d in resp["docs"] if d.get("found")}

    def write(self, docs: Sequence[Document], vectors: np.ndarray) -> int:
        from elasticsearch import helpers

        check_vectors(self.spec, docs, vectors)
        errors: list[dict[str, Any]] = []
        written = 0
        for ok, item in helpers.streaming_bulk(
            self.client.options(request_timeout=self.backend.config.request_timeout),
            self._actions(docs, vectors),
            chunk_size=BULK_CHUNK,
            max_chunk_bytes=20 * 1024 * 1024,
            raise_on_error=False,
            raise_on_exception=True,
            max_retries=8,
            initial_backoff=1.0,
            max_backoff=60.0,
        ):
            if ok:
                written += 1
            else:
                errors.append(item)
        if errors:
            first = next(iter(errors[0].values()))
            raise BackendError(
                f"{len(errors)} of {len(docs)} documents were rejected by '{self.version}'; "
                f"first: id {first.get('_id')}: {_reason(first.get('error', {}))}"
            )
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
        for stale in self.backend.versions(name):
            if stale != self.version:
                indices.delete(index=stale)
        return count

    def close(self) -> None:
        """Nothing to release: the client belongs to the backend."""


def _check_compatible(spec: IndexSpec, meta: dict[str, Any], name: str) -> None:
    dims = int(meta.get("dims", spec.dims))
    if dims != spec.dims:
        raise DimensionMismatchError(
            f"index '{name}' holds {dims}-d vectors from {meta.get('model')} but the encoder "
            f"makes {spec.dims}-d vectors; use the same model, or --recreate to rebuild"
        )
    check_same_vectors(name, VectorRecipe.from_dict(meta.get("recipe")), spec.recipe)


def _hit(raw: dict[str, Any], similarity: str | None) -> Hit:
    src = raw.get("_source", {})
    score = float(raw["_score"])
    if similarity is not None:
        score = bodies.similarity_from_es_score(score, similarity)
    return Hit(id=raw["_id"], score=score, title=src.get("title"), text=src.get("text"))


def _reason(error: Any) -> str:
    if isinstance(error, dict):
        cause = error.get("caused_by")
        reason = str(error.get("reason") or error.get("type") or error)
        return f"{reason} ({_reason(cause)})" if cause else reason
    return str(error)
