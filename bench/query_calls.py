"""Benchmark: queries per ONNX call of the query encoder, on four query sets.

    python -m bench query_calls [--seconds 1.5] [--rounds 2] [--out bench/results/query_calls.json]

The query encoder as `hybrid serve` loads it (all-MiniLM-L6-v2 from the package, ONNX
Runtime, threads sleeping between calls) encodes queries from NFCorpus, SciFact, TREC DL19
and NQ (../shared/datasets; up to 640 drawn at random from each, seed 0; DL19 has 43) in
length-sorted calls of at most 64 queries (the default: one call for a server's
micro-batch of 32, the batch the serving benchmark times the encoder alone at), 16 or 8
(`encode_queries(..., batch_size=N)`). Two workloads: groups of 32 queries in turn, as a
server's micro-batches (queries/s over --seconds, --rounds rounds taking the arms in
turn), and each whole set in one `encode_queries` (eval, mining). Every arm's vectors are
checked equal (1e-5) to one query at a time. Prints a table and writes
bench/results/query_calls.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, SHARED, machine, write_json

ARMS = {"calls of 64 (the default)": 64, "calls of 16": 16, "calls of 8": 8}  # queries per call


def query_sets() -> dict[str, list[str]]:
    def jsonl(path: Path) -> list[str]:
        return [json.loads(line)["text"] for line in path.open(encoding="utf-8")]

    def tsv(path: Path) -> list[str]:
        return [line.rstrip("\n").split("\t")[1] for line in path.open(encoding="utf-8")]

    return {
        "NFCorpus": jsonl(SHARED / "nfcorpus-train-dev" / "queries.jsonl"),
        "SciFact": jsonl(SHARED / "scifact" / "queries.jsonl"),
        "DL19": tsv(SHARED / "msmarco-trec-dl19-pool" / "queries.tsv"),
        "NQ": tsv(SHARED / "nq-open-oracle" / "queries.tsv"),
    }


def encode(encoder: Any, texts: list[str], arm: str) -> Any:
    return encoder.encode_queries(texts, batch_size=ARMS[arm])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "query_calls.json")
    args = parser.parse_args()

    import numpy as np

    from hybrid.query_encoder import open_query_encoder

    encoder = open_query_encoder(None, batch=True, spin=False)
    random.seed(0)
    results: dict[str, Any] = {"machine": machine(), "seconds": args.seconds, "rounds": args.rounds, "sets": {}}
    for name, texts in query_sets().items():
        queries = random.sample(texts, min(len(texts), 640))
        groups = [queries[i : i + 32] for i in range(0, len(queries) - 31, 32)]
        checked = [q for g in groups[:2] for q in g]
        alone = np.vstack([encode(encoder, [q], "calls of 8") for q in checked])
        row: dict[str, Any] = {"mean_chars": round(sum(map(len, queries)) / len(queries), 1), "arms": {}}
        for arm in ARMS:
            got = np.vstack([encode(encoder, g, arm) for g in groups[:2]])
            assert np.abs(got - alone).max() < 1e-5, (name, arm)
        for _ in range(args.rounds):
            for arm in ARMS:
                encode(encoder, groups[0], arm)  # warm-up
                done, start = 0, time.perf_counter()
                while time.perf_counter() - start < args.seconds:
                    encode(encoder, groups[done % len(groups)], arm)
                    done += 1
                rate = done * 32 / (time.perf_counter() - start)
                row["arms"].setdefault(arm, {"groups_of_32_qps": [], "whole_set_qps": None})
                row["arms"][arm]["groups_of_32_qps"].append(round(rate, 1))
        for arm in ARMS:
            start = time.perf_counter()
            encode(encoder, queries, arm)
            row["arms"][arm]["whole_set_qps"] = round(len(queries) / (time.perf_counter() - start), 1)
        results["sets"][name] = row
        print(json.dumps({name: {a: r["groups_of_32_qps"] for a, r in row["arms"].items()}}), flush=True)
    write_json(args.out, results)
    print("| queries (mean chars) | calls | groups of 32: queries/s | whole set: queries/s |")
    print("|---|---|---|---|")
    for name, row in results["sets"].items():
        for arm, r in row["arms"].items():
            rates = " / ".join(f"{x:.0f}" for x in r["groups_of_32_qps"])
            print(f"| {name} ({row['mean_chars']:.0f}) | {arm} | {rates} | {r['whole_set_qps']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
