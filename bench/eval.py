"""Benchmark: retrieval quality and eval throughput on the shared datasets, both backends.

Usage (from the repo root; reads ../shared/datasets):

    python -m bench eval                        # both backends; starts its own ES 9 node
    python -m bench eval --backends embedded

Modes: bm25, dense, hybrid RRF (k=60), hybrid linear (min-max, 0.5/0.5), all-MiniLM-L6-v2
at 256 passage / 64 query tokens. Prints a table and writes bench/results/eval.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, SHARED, machine, write_json

DATASETS: dict[str, dict[str, Any]] = {
    "scifact": {"corpus": "scifact", "queries": "scifact/queries.jsonl", "qrels": "scifact/qrels/test.tsv", "k": 100},
    "dl19-pool": {
        "corpus": "msmarco-trec-dl19-pool/collection.tsv",
        "queries": "msmarco-trec-dl19-pool/queries.tsv",
        "qrels": "msmarco-trec-dl19-pool/qrels.txt",
        "k": 100,
    },
    "nq-open-oracle": {
        "corpus": "nq-open-oracle/passages.tsv",
        "queries": "nq-open-oracle/qa.tsv",
        "qrels": None,
        "k": 100,
    },
}
MODES: dict[str, tuple[str, str]] = {
    "bm25": ("bm25", "rrf"),
    "dense": ("dense", "rrf"),
    "hybrid-rrf": ("hybrid", "rrf"),
    "hybrid-linear": ("hybrid", "linear"),
}


def evaluate_backend(backend: Any, datasets: list[str]) -> dict[str, Any]:
    from hybrid.encoder import Encoder
    from hybrid.evaluation.evaluate import EvalJob, run_eval
    from hybrid.fusion import FusionConfig
    from hybrid.indexing import IndexJob, run_index
    from hybrid.search import SearchConfig

    encoder = Encoder()
    out: dict[str, Any] = {}
    for name in datasets:
        spec = DATASETS[name]
        stats = run_index(IndexJob(corpus=SHARED / spec["corpus"], index=name, recreate=True), backend, encoder)
        out[name] = {"docs": stats.count, "index_s": round(stats.total_seconds, 1), "modes": {}}
        for label, (mode, fusion) in MODES.items():
            config = SearchConfig(mode=mode, k=spec["k"], fusion=FusionConfig(method=fusion, depth=spec["k"]))  # type: ignore[arg-type]
            qrels = SHARED / spec["qrels"] if spec["qrels"] else None
            job = EvalJob(index=name, queries=SHARED / spec["queries"], qrels=qrels, search=config, batch_size=64)
            report = run_eval(job, backend)
            out[name]["modes"][label] = {
                "metrics": report.metrics,
                "queries": report.queries,
                "queries_per_s": report.timings["queries_per_s"],
                "warnings": report.warnings,
            }
            print(json.dumps({name: {label: out[name]["modes"][label]}}), flush=True)
        if backend.kind == "elasticsearch":
            backend.drop(name)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="embedded,es")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--es-url", default=None)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "eval.json")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from hybrid.backends.elastic import ElasticBackend
    from hybrid.backends.embedded import EmbeddedBackend
    from hybrid.config import ElasticConfig
    from tests import es_node

    results: dict[str, Any] = {"machine": machine(), "model": "all-MiniLM-L6-v2", "passage_tokens": 256}
    node = None
    datasets = args.datasets.split(",")
    try:
        for kind in args.backends.split(","):
            if kind == "es":
                if args.es_url is None:
                    node = es_node.start(es_node.ES9)
                backend: Any = ElasticBackend(ElasticConfig(url=args.es_url or str(node["url"])))  # type: ignore[index]
            else:
                backend = EmbeddedBackend(Path(tempfile.mkdtemp(prefix="hybrid-bench-eval-")))
            results[kind] = evaluate_backend(backend, datasets)
            backend.close()
    finally:
        if node is not None:
            es_node.stop(node)
    write_json(args.out, results)
    console = Console()
    for name in datasets:
        metrics = sorted(
            {
                m
                for k in ("embedded", "es")
                if k in results
                for v in results[k][name]["modes"].values()
                for m in v["metrics"]
            }
        )
        table = Table(title=name)
        for col in ("backend", "mode", *metrics, "queries/s"):
            table.add_column(col)
        for kind in ("embedded", "es"):
            if kind not in results:
                continue
            for label, row in results[kind][name]["modes"].items():
                table.add_row(
                    kind,
                    label,
                    *[f"{row['metrics'].get(m, float('nan')):.4f}" for m in metrics],
                    f"{row['queries_per_s']:.1f}",
                )
        console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
