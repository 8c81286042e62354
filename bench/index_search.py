"""Benchmark: index throughput, query latency, nDCG@10 sanity, cold start, memory scaling.

Usage (from the repo root; reads ../shared/datasets):

    python -m bench index_search                      # both backends, starts its own ES 9 node
    python -m bench index_search --backends embedded  # embedded only

Prints a table per section and writes bench/results/index_search.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, SHARED, machine, percentile, write_json


def index_dataset(backend: Any, name: str, corpus: Path, max_length: int) -> dict[str, Any]:
    from hybrid.encoder import Encoder, EncoderConfig
    from hybrid.indexing import IndexJob, run_index

    encoder = Encoder(EncoderConfig(batch_size=32, passage_max_length=max_length))
    stats = run_index(IndexJob(corpus=corpus, index=name, recreate=True), backend, encoder)
    write = stats.write_seconds + stats.commit_seconds
    return {
        "docs": stats.count,
        "total_s": round(stats.total_seconds, 2),
        "encode_s": round(stats.encode_seconds, 2),
        "write_s": round(stats.write_seconds, 2),
        "commit_s": round(stats.commit_seconds, 2),
        "docs_per_s": round(stats.count / stats.total_seconds, 2),
        "write_share": round(write / stats.total_seconds, 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def latency_and_quality(backend: Any, name: str, dataset: Path) -> dict[str, Any]:
    from hybrid.corpus import read_qrels, read_queries
    from hybrid.evaluation.metrics import trec_metrics
    from hybrid.search import SearchConfig, Searcher

    qrels = read_qrels(dataset / "qrels" / "test.tsv")
    queries = [q for q in read_queries(dataset / "queries.jsonl") if q.id in qrels]
    searcher = Searcher(backend, name)
    out: dict[str, Any] = {"queries": len(queries)}
    for mode in ("bm25", "dense", "hybrid"):
        config = SearchConfig(mode=mode, k=100)  # type: ignore[arg-type]
        searcher.search([queries[0].text], config)  # warm-up: model, JVM, FAISS
        times, run = [], {}
        for q in queries:
            t0 = time.perf_counter()
            hits = searcher.search([q.text], config)[0]
            times.append((time.perf_counter() - t0) * 1000)
            run[q.id] = [(h.id, h.score) for h in hits]
        metrics, _ = trec_metrics(qrels, run, ["ndcg@10", "recall@100"])
        out[mode] = {
            "p50_ms": round(percentile(times, 0.5), 2),
            "p95_ms": round(percentile(times, 0.95), 2),
            "ndcg@10": round(metrics["ndcg@10"], 4),
            "recall@100": round(metrics["recall@100"], 4),
        }
    return out


def cold_start(store: Path, name: str, repeats: int = 3, env: dict[str, str] | None = None) -> dict[str, float]:
    """Wall time of a fresh ``hybrid search`` process, launch to printed hits (median).

    ``env`` is added to this process's environment for the searches.
    """
    out: dict[str, float] = {}
    for mode in ("bm25", "dense", "hybrid"):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            subprocess.run(
                [
                    str(Path(sys.executable).parent / "hybrid"),
                    "search",
                    "cholesterol and heart disease",
                    "--index",
                    name,
                    "--store",
                    str(store),
                    "--mode",
                    mode,
                    "--json",
                ],
                check=True,
                capture_output=True,
                env={**os.environ, **(env or {})},
            )
            times.append(time.perf_counter() - t0)
        out[mode] = round(sorted(times)[len(times) // 2], 3)
    return out


def memory_child(backend_kind: str, docs: int, es_url: str | None) -> None:
    """Index ``docs`` documents (SciFact repeated with new ids) and print peak RSS as JSON."""
    from hybrid.backends import open_backend
    from hybrid.config import ElasticConfig
    from hybrid.encoder import Encoder, EncoderConfig
    from hybrid.indexing import IndexJob, run_index

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        source = (SHARED / "scifact" / "corpus.jsonl").read_text().splitlines()
        with corpus.open("w") as fh:
            for i in range(docs):
                row = json.loads(source[i % len(source)])
                row["_id"] = f"{row['_id']}-{i // len(source)}"
                fh.write(json.dumps(row) + "\n")
        del source
        backend = open_backend(ElasticConfig(url=es_url) if es_url else None, Path(tmp) / "store")
        encoder = Encoder(EncoderConfig(model=os.environ["BENCH_TINY_MODEL"], batch_size=64))
        stats = run_index(IndexJob(corpus=corpus, index=f"bench-mem-{docs}", recreate=True), backend, encoder)
        if es_url:
            backend.drop(f"bench-mem-{docs}")
        backend.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"docs": stats.count, "peak_rss_mb": round(rss, 1), "seconds": round(stats.total_seconds, 1)}))


def memory_scaling(backend_kind: str, es_url: str | None, sizes: list[int], tiny: Path) -> list[dict[str, Any]]:
    rows = []
    for docs in sizes:
        cmd = [sys.executable, __file__, "--memory-child", backend_kind, "--docs", str(docs)]
        if es_url:
            cmd += ["--es-url", es_url]
        env = {**os.environ, "BENCH_TINY_MODEL": str(tiny)}
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    return rows


def make_tiny_model(path: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from hybrid.encoder import EncoderSettings, default_model_dir, save_settings

    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
    BertModel(cfg).save_pretrained(path)
    AutoTokenizer.from_pretrained(str(default_model_dir()), local_files_only=True).save_pretrained(path)
    save_settings(path, EncoderSettings(normalize=True, passage_max_length=128))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="embedded,es")
    parser.add_argument("--dataset", type=Path, default=SHARED / "scifact")
    parser.add_argument("--max-length", type=int, default=256, help="passage tokens (reference: 256)")
    parser.add_argument("--es-url", default=None, help="existing node; default: start ES 9 from tests/es_node.py")
    parser.add_argument("--memory-sizes", default="5000,50000")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "index_search.json")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--docs", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.docs, args.es_url)
        return 0

    from rich.console import Console
    from rich.table import Table

    from hybrid.backends.elastic import ElasticBackend
    from hybrid.backends.embedded import EmbeddedBackend
    from hybrid.config import ElasticConfig
    from tests import es_node

    console = Console()
    results: dict[str, Any] = {"machine": machine(), "dataset": str(args.dataset), "max_length": args.max_length}
    node = None
    work = Path(tempfile.mkdtemp(prefix="hybrid-bench-"))
    tiny = make_tiny_model(work / "tiny")
    try:
        for kind in args.backends.split(","):
            es_url = None
            if kind == "es":
                if args.es_url is None and node is None:
                    node = es_node.start(es_node.ES9)
                es_url = args.es_url or str(node["url"])  # type: ignore[index]
                backend: Any = ElasticBackend(ElasticConfig(url=es_url))
            else:
                backend = EmbeddedBackend(work / "store")
            console.print(f"[bold]{kind}[/bold]: indexing {args.dataset.name} …")
            res: dict[str, Any] = {"index": index_dataset(backend, "scifact", args.dataset, args.max_length)}
            res["search"] = latency_and_quality(backend, "scifact", args.dataset)
            if kind == "embedded":
                cold_start(work / "store", "scifact", repeats=1)  # exports the ONNX graph once
                res["cold_start_s"] = cold_start(work / "store", "scifact")
            else:
                backend.drop("scifact")
            backend.close()
            sizes = [int(s) for s in args.memory_sizes.split(",") if s]
            res["memory"] = memory_scaling(kind, es_url, sizes, tiny)
            results[kind] = res
            console.print_json(json.dumps(res))
    finally:
        if node is not None:
            es_node.stop(node)
    write_json(args.out, results)
    print_tables(console, results, Table)
    return 0


def print_tables(console: Any, results: dict[str, Any], table_cls: Any) -> None:
    kinds = [k for k in ("embedded", "es") if k in results]
    t = table_cls(title="Indexing SciFact (5,183 docs, all-MiniLM-L6-v2)")
    for col in ("backend", "docs/s", "encode s", "write+commit s", "write share", "peak RSS MB"):
        t.add_column(col)
    for k in kinds:
        i = results[k]["index"]
        t.add_row(
            k,
            str(i["docs_per_s"]),
            str(i["encode_s"]),
            f"{i['write_s'] + i['commit_s']:.2f}",
            f"{i['write_share']:.1%}",
            str(i["peak_rss_mb"]),
        )
    console.print(t)
    t = table_cls(title="Search, 300 SciFact test queries one at a time (k=100)")
    for col in ("backend", "mode", "p50 ms", "p95 ms", "nDCG@10", "R@100"):
        t.add_column(col)
    for k in kinds:
        for mode in ("bm25", "dense", "hybrid"):
            s = results[k]["search"][mode]
            t.add_row(k, mode, str(s["p50_ms"]), str(s["p95_ms"]), str(s["ndcg@10"]), str(s["recall@100"]))
    console.print(t)
    if "cold_start_s" in results.get("embedded", {}):
        console.print(f"cold `hybrid search` (embedded, median of 3): {results['embedded']['cold_start_s']}")
    t = table_cls(title="Peak RSS while indexing (tiny 2-layer model: isolates the pipeline)")
    for col in ("backend", "docs", "peak RSS MB", "seconds"):
        t.add_column(col)
    for k in kinds:
        for row in results[k]["memory"]:
            t.add_row(k, f"{row['docs']:,}", str(row["peak_rss_mb"]), str(row["seconds"]))
    console.print(t)


if __name__ == "__main__":
    sys.exit(main())
