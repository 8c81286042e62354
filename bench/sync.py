"""Benchmark: `hybrid sync --follow` keeping an adopted index complete while an application writes.

    python bench/sync.py [--rate 5] [--seconds 120] [--docs 600] [--model DIR|tiny] [--es-url URL]

On one node, with real MS MARCO passages (the DL19 pool):

1. throughput: ``hybrid index`` of ``--docs`` passages into a new index of hybrid's own,
   and ``hybrid sync`` (one pass) of the same passages written by an application into an
   index adopted in place; both as CLI processes, docs/s from their own stats (model
   loading excluded from both);
2. follow: ``hybrid sync --follow --interval 1`` runs while an application *process* writes
   ``--rate`` documents a second for ``--seconds`` (four in five new, one in five a whole
   rewrite of an earlier one with other text). A watcher reads each written document in
   real time (``mget``) until the text hash beside its vector matches the text written:
   the lag from write to vector. Documents still without their vector 60 s after the
   application stops are *missed*. Then sync gets SIGTERM and must exit 0.

The default model is the shipped all-MiniLM-L6-v2; ``--model tiny`` uses a 2-layer 32-d
random BERT (tests/models.py), which measures sync's machinery rather than the encoder.
Starts ES 9 from tests/es_node.py unless ``--es-url`` is given.
Writes bench/results/sync.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, SHARED, machine, percentile, write_json

CORPUS = SHARED / "msmarco-trec-dl19-pool" / "collection.tsv"
PLAIN, SHOP = "bench-sync-plain", "bench-sync-shop"
FIELD = "hybrid_vector_v1"
HYBRID = [sys.executable, "-m", "hybrid.cli"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=5.0, help="application writes per second")
    parser.add_argument("--seconds", type=float, default=120.0, help="how long the application writes")
    parser.add_argument("--docs", type=int, default=600, help="passages for the throughput comparison")
    parser.add_argument("--model", default=None, help="model directory, or 'tiny' (default: all-MiniLM-L6-v2)")
    parser.add_argument("--es-url", default=None, help="an existing node; default: start ES 9 from tests/es_node.py")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "sync.json")
    args = parser.parse_args()
    if not CORPUS.is_file():
        raise SystemExit(f"{CORPUS} not found: this benchmark reads MS MARCO passages from ../shared/datasets")
    from tests import es_node

    node = None if args.es_url else es_node.start(es_node.ES9, heap="1g")
    url = args.es_url or str(node["url"])  # type: ignore[index]
    try:
        with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
            result = run(url, args, Path(tmp))
    finally:
        if node is not None:
            es_node.stop(node)
    command = "python bench/sync.py " + " ".join(sys.argv[1:])
    meta = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "command": command, "machine": machine()}
    write_json(args.out, {**meta, "args": {k: str(v) for k, v in vars(args).items()}, **result})
    print(f"wrote {args.out}")
    return 0


def run(url: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from elasticsearch import Elasticsearch

    from hybrid.corpus import open_corpus
    from hybrid.encoder import resolve_model

    client = Elasticsearch(url, request_timeout=300)
    model = _model(args.model, tmp)
    name = resolve_model(None)[1] if args.model is None else ("tiny random BERT (2x32)" if model else args.model)
    wanted = args.docs + 50 + int(args.rate * args.seconds) + 10
    passages = list(itertools.islice(open_corpus(CORPUS), wanted))
    _clean(client)
    try:
        throughput = _throughput(client, url, model, passages, args.docs, tmp)
        follow = _follow(client, url, passages[args.docs + 50 :], args)
    finally:
        _clean(client)
        client.close()
    result = {"model": name, **throughput, **follow}
    _table(result, args)
    return result


def _model(choice: str | None, tmp: Path) -> str | None:
    if choice != "tiny":
        return choice
    from tests.models import tiny_bert

    return str(tiny_bert(tmp / "tiny"))


def _clean(client: Any) -> None:
    client.indices.delete(index=f"{PLAIN}*,{SHOP}", ignore_unavailable=True, allow_no_indices=True)
    client.options(ignore_status=404).delete(index="hybrid-locks", id=PLAIN)


def _cli(url: str, *args: str) -> list[str]:
    return [*HYBRID, *args, "--es-url", url]


def _throughput(client: Any, url: str, model: str | None, passages: list[Any], docs: int, tmp: Path) -> dict[str, Any]:
    """``hybrid index`` of ``docs`` passages vs ``hybrid sync`` of the same passages written by an application."""
    from elasticsearch import helpers

    first, rest = passages[:docs], passages[docs : docs + 50]
    corpus = tmp / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": d.id, "title": d.title, "text": d.text}) + "\n" for d in first))
    with_model = ["-m", model] if model else []
    index = subprocess.run(
        _cli(url, "index", str(corpus), "-i", PLAIN, *with_model, "-q", "--json"), capture_output=True, text=True
    )
    if index.returncode:
        raise SystemExit(index.stderr)
    plain = json.loads(index.stdout)
    # the application's index: 50 documents adopted in place, then the same passages written by it
    client.indices.create(index=SHOP, mappings={"properties": {"title": {"type": "text"}, "text": {"type": "text"}}})
    helpers.bulk(client, _rows(rest), refresh=True)
    adopt = ["index", "--from-es", SHOP, "--in-place", "--text-field", "text", "--title-field", "title", "-i", SHOP]
    subprocess.run(_cli(url, *adopt, *with_model, "-q", "--json"), check=True, capture_output=True)
    helpers.bulk(client, _rows(first), refresh=True)
    done = subprocess.run(_cli(url, "sync", "-i", SHOP, "-q", "--json"), capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr)
    passes = [json.loads(line) for line in done.stdout.splitlines()]
    embedded = sum(p["embedded"] for p in passes)
    seconds = sum(p["seconds"] - p["model_seconds"] for p in passes)  # as hybrid index's, without the model load
    index_rate, sync_rate = plain["written"] / plain["total_seconds"], embedded / seconds
    print(f"hybrid index: {plain['written']} docs in {plain['total_seconds']:.1f}s; sync: {embedded} in {seconds:.1f}s")
    return {
        "index_docs_per_s": index_rate,
        "sync_docs_per_s": sync_rate,
        "sync_vs_index": sync_rate / index_rate,
        "throughput_docs": docs,
        "sync_passes": passes,
    }


def _rows(docs: list[Any], prefix: str = "") -> Any:
    return ({"_index": SHOP, "_id": prefix + d.id, "_source": {"title": d.title, "text": d.text}} for d in docs)


def _application(url: str, docs: list[tuple[str, str, str]], rate: float, seconds: float, out: Any) -> None:
    """Writes ``rate`` documents a second: four in five new, one in five rewriting an earlier
    one whole with another passage; reports ``(id, hash of what it wrote, time)``."""
    import random

    from elasticsearch import Elasticsearch

    from hybrid.backends.es_hash import text_hash
    from hybrid.types import Document

    client = Elasticsearch(url, request_timeout=60)
    rng = random.Random(0)
    written: list[str] = []
    start = time.time()
    for n, (doc_id, title, text) in enumerate(docs):
        due = start + n / rate
        if due > start + seconds:
            break
        time.sleep(max(0.0, due - time.time()))
        target = rng.choice(written) if written and rng.random() < 0.2 else f"app-{doc_id}"
        client.index(index=SHOP, id=target, document={"title": title, "text": text})
        out.put((target, text_hash(Document(id=target, text=text, title=title)), time.time()))
        written.append(target)
    out.put(None)
    client.close()


def _follow(client: Any, url: str, docs: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    """``hybrid sync --follow`` while an application process writes; lag and misses."""
    import threading

    proc = subprocess.Popen(
        _cli(url, "sync", "-i", SHOP, "--follow", "--interval", "1", "--json", "-q"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    try:
        warm = docs[0]  # the follower loads its model for its first document: not what is measured
        client.index(index=SHOP, id="warm-up", document={"title": warm.title, "text": warm.text})
        _wait_for(client, {"warm-up": (_hash(warm), time.time())}, time.time() + 300)
        queue: Any = multiprocessing.Queue()
        rows = [(d.id, d.title, d.text) for d in docs[1:]]
        app = multiprocessing.Process(target=_application, args=(url, rows, args.rate, args.seconds, queue))
        app.start()
        lags, superseded, missed = _watch(client, queue)
        app.join()
        client.indices.refresh(index=SHOP)
        without = client.count(index=SHOP, query={"bool": {"must_not": [{"exists": {"field": FIELD}}]}})["count"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
    passes = [json.loads(line) for line in lines if line.startswith("{")]
    return {
        "writes": len(lags) + superseded + missed,
        "lag_p50_s": percentile(lags, 0.5),
        "lag_p99_s": percentile(lags, 0.99),
        "lag_max_s": max(lags, default=float("nan")),
        "superseded_before_embedded": superseded,
        "missed_60s_after": missed,
        "without_vector_at_end": int(without),
        "sync_exit_status": proc.returncode,
        "follow_passes": len(passes),
        "follow_embedded": sum(p["embedded"] for p in passes),
        "follow_conflicts": sum(p["conflicts"] for p in passes),
    }


def _hash(doc: Any) -> str:
    from hybrid.backends.es_hash import text_hash

    return text_hash(doc)


def _seen(client: Any, pending: dict[str, tuple[str, float]]) -> dict[str, float]:
    """The pending documents whose vector now goes with the text last written: id -> lag."""
    from hybrid.backends.es_hash import hash_field

    resp = client.mget(index=SHOP, ids=list(pending), source_includes=[hash_field(FIELD)])
    now = time.time()
    out = {}
    for doc in resp["docs"]:
        if doc.get("found") and doc["_source"].get(hash_field(FIELD)) == pending[doc["_id"]][0]:
            out[doc["_id"]] = now - pending[doc["_id"]][1]
    return out


def _wait_for(client: Any, pending: dict[str, tuple[str, float]], deadline: float) -> None:
    while pending and time.time() < deadline:
        for doc_id in _seen(client, pending):
            pending.pop(doc_id)
        time.sleep(0.1)
    if pending:
        raise SystemExit(f"sync --follow did not embed {sorted(pending)} in time")


def _watch(client: Any, queue: Any) -> tuple[list[float], int, int]:
    """Poll every 0.1 s (real-time reads) until each write's vector is there; returns the lags,
    writes superseded by a rewrite before their vector came, and writes still without one
    60 s after the application stopped."""
    import queue as queues

    pending: dict[str, tuple[str, float]] = {}
    lags: list[float] = []
    superseded = 0
    stopped: float | None = None
    while stopped is None or (pending and time.time() < stopped + 60):
        try:
            while True:
                item = queue.get_nowait()
                if item is None:
                    stopped = time.time()
                    break
                superseded += item[0] in pending
                pending[item[0]] = (item[1], item[2])
        except queues.Empty:
            pass
        if pending:
            for doc_id, lag in _seen(client, pending).items():
                pending.pop(doc_id)
                lags.append(lag)
        time.sleep(0.1)
    return lags, superseded, len(pending)


def _table(result: dict[str, Any], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"hybrid sync, model {result['model']}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        (f"hybrid index, {args.docs} passages", f"{result['index_docs_per_s']:.1f} docs/s"),
        ("hybrid sync, the same passages", f"{result['sync_docs_per_s']:.1f} docs/s"),
        ("sync / index", f"{result['sync_vs_index']:.2f}x"),
        (f"--follow: application writes ({args.rate:g}/s, {args.seconds:g}s)", f"{result['writes']}"),
        (
            "lag write -> vector p50 / p99 / max",
            f"{result['lag_p50_s']:.2f} / {result['lag_p99_s']:.2f} / {result['lag_max_s']:.2f} s",
        ),
        ("missed (no vector 60 s after the application stopped)", str(result["missed_60s_after"])),
        ("documents without a vector at the end", str(result["without_vector_at_end"])),
        ("sync exit status on SIGTERM", str(result["sync_exit_status"])),
    ]
    for row in rows:
        table.add_row(*row)
    Console().print(table)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
