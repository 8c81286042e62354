"""Benchmark: query encoding and dense eval throughput on SciFact, and a cold `hybrid search`.

    python -m bench eval_speed [--store DIR [--index NAME]]   # reuse a store's SciFact index (default 'scifact')
    python -m bench eval_speed --cold-only --store DIR [--index NAME]   # the cold search alone

Same run, same 300 SciFact test queries: the ONNX Runtime query encoder (what search,
serve, eval and mine use) and the torch encoder (the peer: the model as transformers runs
it), queries/s and the ratio; then `hybrid eval`'s library path, dense mode, k=1000,
on the embedded store (search time only, metrics excluded); last, a cold `hybrid search`
process per mode, launch to printed hits (median of --cold-runs). Builds the index when no
store is given (minutes of encoding on a small CPU). Writes bench/results/eval_speed.json;
with --cold-only, only the cold search runs and it writes bench/results/cold_search.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, SHARED, machine, write_json

SCIFACT = SHARED / "scifact"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--index", default="scifact", help="the SciFact index in --store")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cold-only", action="store_true", help="time only the cold `hybrid search` processes")
    parser.add_argument("--cold-runs", type=int, default=5, help="cold searches per mode (the median is kept)")
    parser.add_argument("--out", type=Path, default=None, help="JSON to write (default: by what runs)")
    args = parser.parse_args()
    results = cold_only(args) if args.cold_only else speeds(args)
    out = args.out or REPO / "bench" / "results" / ("cold_search.json" if args.cold_only else "eval_speed.json")
    write_json(out, results)
    return 0


def cold_only(args: argparse.Namespace) -> dict[str, Any]:
    """A fresh `hybrid search` per mode on an existing SciFact index, launch to printed hits."""
    from hybrid.backends.embedded import EmbeddedBackend

    if args.store is None:
        raise SystemExit("--cold-only needs --store DIR holding the index (hybrid index ... --store DIR)")
    backend = EmbeddedBackend(args.store)
    try:
        docs = backend.count(args.index)
    finally:
        backend.close()
    return {"machine": machine(), "index": args.index, "documents": docs, **cold_searches(args)}


def cold_searches(args: argparse.Namespace) -> dict[str, Any]:
    """Median wall time of fresh `hybrid search` processes per mode, after one untimed search."""
    from bench.index_search import cold_start

    cold_start(args.store, args.index, repeats=1)  # the first search exports the ONNX graph once; not timed
    # the modes alternate within each run, so a busy moment on the machine touches all of them
    runs = [cold_start(args.store, args.index, 1) for _ in range(args.cold_runs)]
    cold = {m: _median([r[m] for r in runs]) for m in runs[0]}
    print(f"cold `hybrid search` process, median of {args.cold_runs} (s): {cold}")
    return {"cold_search_s": cold, "cold_search_runs_s": runs}


def speeds(args: argparse.Namespace) -> dict[str, Any]:
    """Query encoding (ONNX vs torch), dense eval at k=1000, then the cold searches."""
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
    args.store = store
    print("| encoder | queries/s (300 SciFact test queries, batch 32) |\n|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate} |")
    print(f"onnx / torch: {results['onnx_over_torch']}x")
    dense = results["dense_eval_k1000"]
    print(f"dense eval, k=1000, embedded: {dense['queries_per_s']} queries/s (nDCG@10 {dense['ndcg@10']})")
    results.update(cold_searches(args))
    return results


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
