"""Benchmark: how fast batch jobs encode queries, and dense eval throughput on SciFact.

    python bench/eval_speed.py [--store DIR [--index NAME]]   # reuse a store's SciFact index (default 'scifact')

Same run, same 300 SciFact test queries: the ONNX Runtime query encoder (what search,
serve, eval and mine use) and the torch encoder (the peer: the model as transformers runs
it), queries/s and the ratio; then `hybrid eval`'s library path, dense mode, k=1000,
on the embedded store (search time only, metrics excluded); last, a cold `hybrid search`
process per mode, launch to printed hits (median of 5). Builds the index when no store is
given (~5 min of encoding on 2 cores). Writes bench/results/eval_speed.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, SHARED, machine, write_json

SCIFACT = SHARED / "scifact"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--index", default="scifact", help="the SciFact index in --store")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "eval_speed.json")
    args = parser.parse_args()

    from hybrid.backends.embedded import EmbeddedBackend
    from hybrid.corpus import read_qrels, read_queries
    from hybrid.encoder import Encoder
    from hybrid.evaluation.evaluate import EvalJob, run_eval
    from hybrid.indexing import IndexJob, run_index
    from hybrid.onnx_encoder import OnnxQueryEncoder
    from hybrid.search import SearchConfig

    qrels = read_qrels(SCIFACT / "qrels" / "test.tsv")
    texts = [q.text for q in read_queries(SCIFACT / "queries.jsonl") if q.id in qrels]
    encoders = {"onnx": OnnxQueryEncoder(), "torch": Encoder()}
    rates: dict[str, float] = {}
    for name, encoder in encoders.items():
        encoder.encode_queries(texts[:32])  # warm up
        best = min(_timed(lambda e=encoder: e.encode_queries(texts)) for _ in range(args.repeats))
        rates[name] = round(len(texts) / best, 1)

    store = args.store or Path(tempfile.mkdtemp(prefix="hybrid-bench-speed-"))
    backend = EmbeddedBackend(store)
    if not backend.exists(args.index):
        run_index(IndexJob(corpus=SCIFACT, index=args.index), backend, encoders["torch"])
    job = EvalJob(
        index=args.index,
        queries=SCIFACT / "queries.jsonl",
        qrels=SCIFACT / "qrels" / "test.tsv",
        search=SearchConfig(mode="dense", k=1000),
    )
    reports = [run_eval(job, backend) for _ in range(args.repeats)]
    backend.close()
    best = max(reports, key=lambda r: r.timings["queries_per_s"])
    results = {
        "machine": machine(),
        "queries": len(texts),
        "encode_queries_per_s": rates,
        "onnx_over_torch": round(rates["onnx"] / rates["torch"], 2),
        "dense_eval_k1000": {
            "queries_per_s": best.timings["queries_per_s"],
            "search_s": best.timings["search_s"],
            "ndcg@10": best.metrics["ndcg@10"],
            "recall@1000": best.metrics.get("recall@1000"),
        },
    }
    from bench.index_search import cold_start, settle_class_sharing

    # The first search exports the ONNX graph once and records the JVM's classes; not timed.
    cold_start(store, args.index, repeats=1)
    settle_class_sharing()
    # Same run, alternating: the JVM without and with its class-sharing archive (the default).
    rounds = [
        (cold_start(store, args.index, 1, {"HYBRID_JVM_CDS": "0"}), cold_start(store, args.index, 1)) for _ in range(5)
    ]
    results["cold_search_s"] = {m: _median([r[1][m] for r in rounds]) for m in rounds[0][1]}
    results["cold_search_no_class_sharing_s"] = {m: _median([r[0][m] for r in rounds]) for m in rounds[0][0]}
    write_json(args.out, results)
    print("| encoder | queries/s (300 SciFact test queries, batch 32) |\n|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate} |")
    print(f"onnx / torch: {results['onnx_over_torch']}x")
    dense = results["dense_eval_k1000"]
    print(f"dense eval, k=1000, embedded: {dense['queries_per_s']} queries/s (nDCG@10 {dense['ndcg@10']})")
    print(f"cold `hybrid search` process, median of 5 (s): {results['cold_search_s']}")
    print(f"  without the JVM class-sharing archive: {results['cold_search_no_class_sharing_s']}")
    return 0


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
