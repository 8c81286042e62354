"""Benchmark: a refresh on Elasticsearch, whole documents into a new index vs vector fields in place.

    python -m bench es_refresh [--docs 10000] [--repeats 3] [--es-url URL]

The two ways hybrid writes a new model's vectors to ES, on one node, the same documents
(the first ``--docs`` passages of the MS MARCO DL19 pool, real text) and the same vectors:

- ``new index``: hybrid's own indices. ``reembed`` reads the current version and writes
  every document (id, title, text, vector) into a new physical index, then moves the alias
  and deletes the old index;
- ``in place``: an index adopted with ``--in-place``. ``reembed`` sends partial updates
  that add the next ``hybrid_vector_vN`` field only, then flips the active field; earlier
  fields stay, as a training refresh leaves them;
- ``in place, --drop-old``: the same, then the previous field is removed from every
  document (partial updates setting it to null), as ``hybrid index --in-place --recreate
  --drop-old`` does: the in-place refresh that removes the old vectors.

The vectors are 384 random unit float32 values per document under all-MiniLM-L6-v2's
recipe, computed before the clock starts: encoding is the same work in every arm and is
taken out, so what is timed is the read, the bulk writes and the commit (and the drop).
Arms take turns going first, ``--repeats`` refreshes each, and each refresh's time is set
against the new index's in the same round: an in-place refresh re-indexes every vector
field a document still holds, so its cost depends on how many earlier refreshes left
theirs. The store is measured after each refresh and, after the last, once more merged into one
segment (not timed: what it settles to once the deleted copies are merged away); a new index
briefly holds both versions. The indices are as hybrid and a user would have them: the
new index also indexes an ``id`` keyword and a ``contents`` copy of title and text, and
is written with ``refresh_interval: -1``; the adopted index is a plain title/text index
(1 s refresh) whose vectors stay out of ``_source`` only where the cluster's default
does so (ES 9; recorded in the JSON). Starts ES 9 from tests/es_node.py unless
``--es-url`` is given.
Writes bench/results/es_refresh.json.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, SHARED, machine, write_json

CORPUS = SHARED / "msmarco-trec-dl19-pool" / "collection.tsv"
OWN, ADOPTED = "bench-own", ("bench-shop", "bench-shop-dropped")


class RandomVectors:
    """The encoder's interface with MiniLM's recipe and dims; the vectors are random unit
    vectors, computed before the timing starts (``seed`` makes each refresh's new)."""

    def __init__(self, encoder: Any, docs: Sequence[Any], seed: int) -> None:
        self.encoder, self.dims, self.name, self.settings = encoder, encoder.dims, encoder.name, encoder.settings
        rng = np.random.default_rng(seed)
        matrix = rng.standard_normal((len(docs), self.dims)).astype(np.float32)
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        self.vectors = {doc.id: row for doc, row in zip(docs, matrix, strict=True)}

    def recipe(self) -> Any:
        return self.encoder.recipe()

    def encode_passages(self, docs: Sequence[Any]) -> np.ndarray:
        return np.stack([self.vectors[doc.id] for doc in docs])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256, help="documents a bulk write (reembed's default)")
    parser.add_argument("--es-url", default=None, help="an existing node; default: start ES 9 from tests/es_node.py")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "es_refresh.json")
    args = parser.parse_args()
    if not CORPUS.is_file():
        raise SystemExit(f"{CORPUS} not found: this benchmark reads MS MARCO passages from ../shared/datasets")

    import logging

    logging.disable(logging.WARNING)
    from tests import es_node

    node = None if args.es_url else es_node.start(es_node.ES9, heap="1g")
    url = args.es_url or str(node["url"])  # type: ignore[index]
    try:
        result = run(url, args)
    finally:
        if node is not None:
            es_node.stop(node)
    write_json(args.out, {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}, **result})
    print(f"wrote {args.out}")
    return 0


def run(url: str, args: argparse.Namespace) -> dict[str, Any]:
    from hybrid.backends.elastic import ElasticBackend
    from hybrid.config import ElasticConfig

    backend = ElasticBackend(ElasticConfig(url=url, request_timeout=300))
    _clean(backend)
    try:
        return _compare(backend, args)
    finally:
        _clean(backend)
        backend.close()


def _compare(backend: Any, args: argparse.Namespace) -> dict[str, Any]:
    from elasticsearch.helpers import bulk

    from hybrid.backends.es_inplace import adopt, drop_field, split
    from hybrid.backends.es_source import ElasticSource, SourceFields
    from hybrid.corpus import open_corpus
    from hybrid.encoder import Encoder, EncoderConfig
    from hybrid.indexing import IndexJob, run_index
    from hybrid.training.refresh import reembed

    client = backend.client
    docs = list(itertools.islice(open_corpus(CORPUS), args.docs))
    print(f"setup: {len(docs):,} MS MARCO passages into '{OWN}' (hybrid's) and {ADOPTED} (a user's, adopted in place)")
    encoder = Encoder(EncoderConfig())  # its recipe and dims; it encodes nothing here
    first = RandomVectors(encoder, docs, seed=0)
    run_index(IndexJob(corpus=None, index=OWN, batch_size=args.batch_size), backend, first, documents=docs)  # type: ignore[arg-type]
    for index in ADOPTED:
        client.indices.create(
            index=index, mappings={"properties": {"title": {"type": "text"}, "text": {"type": "text"}}}
        )
        bulk(
            client.options(request_timeout=300),
            ({"_index": index, "_id": d.id, "_source": {"title": d.title, "text": d.text}} for d in docs),
        )
        client.indices.refresh(index=index)
        adopt(client, index, "text", "title")
        source = ElasticSource(client, index, SourceFields(text="text", title="title", id="_id"))
        run_index(IndexJob(corpus=None, index=index, batch_size=args.batch_size), backend, first, documents=source)  # type: ignore[arg-type]

    arms = {"new index": OWN, "in place": ADOPTED[0], "in place, --drop-old": ADOPTED[1]}
    rows: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    for repeat in range(1, args.repeats + 1):
        vectors = RandomVectors(encoder, docs, seed=repeat)  # one model's vectors for every arm
        turn = (repeat - 1) % len(arms)
        for arm in list(arms)[turn:] + list(arms)[:turn]:  # each arm goes first in turn
            index = arms[arm]
            previous = backend.current(index)
            fields_before = _filled_vector_fields(client, index)
            started = time.perf_counter()
            version, count, _ = reembed(backend, index, vectors, batch_size=args.batch_size)  # type: ignore[arg-type]
            if arm.endswith("--drop-old"):  # what `hybrid index --in-place --recreate --drop-old` does after the switch
                parts = split(str(previous))
                assert parts is not None, f"{previous} is not an in-place version"
                drop_field(client, index, parts[1])
            seconds = time.perf_counter() - started
            if count != len(docs):
                raise SystemExit(f"{arm}: {count} documents after the refresh, expected {len(docs)}")
            row = {"repeat": repeat, "seconds": round(seconds, 2), "version": version, "vector_fields": fields_before}
            row.update(_store(client, index, prefix="store"))
            rows[arm].append(row)
            print(
                f"{arm:22} refresh {repeat}: {seconds:6.1f} s  {len(docs) / seconds:6.0f} docs/s  "
                f"vector fields on the documents before {fields_before}  store {row['store_mib']:.1f} MiB "
                f"({row['store_deleted_docs']:,} deleted docs)",
                flush=True,
            )
    merged = {}
    for arm, index in arms.items():  # after the last refresh, not timed: what the store settles to
        client.options(request_timeout=1800).indices.forcemerge(index=index, max_num_segments=1)
        merged[arm] = {**_store(client, index, prefix="merged"), "vector_field_mib": _vector_disk(client, index)}
    summary: dict[str, Any] = {}
    print(f"\n{'arm':22} {'median s':>9} {'docs/s':>8} {'over new index, per refresh':>28} {'merged MiB':>11}")
    for arm, done in rows.items():
        median = statistics.median(r["seconds"] for r in done)
        paired = [round(r["seconds"] / o["seconds"], 2) for r, o in zip(done, rows["new index"], strict=True)]
        summary[arm] = {
            "median_s": round(median, 2),
            "docs_per_s": round(len(docs) / median, 1),
            "over_new_index": paired,
            **merged[arm],
        }
        ratios = " ".join(f"{r:.2f}x" for r in paired)
        print(f"{arm:22} {median:9.1f} {len(docs) / median:8.0f} {ratios:>28} {merged[arm]['merged_mib']:11.1f}")
    settings = client.indices.get_settings(index=ADOPTED[0], include_defaults=True, flat_settings=True)
    retention = next(iter(settings.values()))["defaults"].get("index.soft_deletes.retention_lease.period")
    print(f"index.soft_deletes.retention_lease.period (the node's default): {retention}")
    return {
        "docs": len(docs),
        "es": backend.cluster_version(),
        "soft_deletes_retention_lease_period": retention,
        "rows": rows,
        "summary": summary,
    }


def _clean(backend: Any) -> None:
    if backend.exists(OWN):
        backend.drop(OWN)  # its physical versions (the alias goes with them)
    backend.client.indices.delete(index=",".join(ADOPTED), ignore_unavailable=True)


def _vector_disk(client: Any, index: str) -> dict[str, float]:
    """MiB on disk of each vector field (ES's ``_disk_usage`` analysis, which reads every file)."""
    usage = client.perform_request(
        "POST",
        f"/{index}/_disk_usage",
        params={"run_expensive_tasks": "true"},
        headers={"accept": "application/json"},
    ).body
    fields = next(v for k, v in usage.items() if k != "_shards")["fields"]
    return {
        f: round(v["total_in_bytes"] / 2**20, 2)
        for f, v in fields.items()
        if f == "vector" or f.startswith("hybrid_vector_v")
    }


def _store(client: Any, index: str, prefix: str) -> dict[str, Any]:
    """The index's primary store size and deleted documents after an ES refresh."""
    client.indices.refresh(index=index)
    stats = client.indices.stats(index=index, metric="store,docs")
    primaries = [i["primaries"] for i in stats["indices"].values()]
    return {
        f"{prefix}_mib": round(sum(p["store"]["size_in_bytes"] for p in primaries) / 2**20, 1),
        f"{prefix}_deleted_docs": sum(p["docs"]["deleted"] for p in primaries),
    }


def _filled_vector_fields(client: Any, index: str) -> int:
    """How many vector fields the index's documents hold (the mapping keeps dropped ones)."""
    client.indices.refresh(index=index)
    mapping = client.indices.get_mapping(index=index)
    props = next(iter(mapping.values()))["mappings"].get("properties", {})
    fields = [f for f, p in props.items() if p.get("type") == "dense_vector"]
    return sum(1 for f in fields if client.count(index=index, query={"exists": {"field": f}})["count"])


if __name__ == "__main__":
    raise SystemExit(main())
