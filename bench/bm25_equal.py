"""Benchmark: the embedded store's BM25 against Anserini's SimpleSearcher, equal and how fast.

    python -m bench bm25_equal [--dataset DIR] [--ks 10,100,1000] [--batch 32]
                               [--out bench/results/bm25_equal.json]

Builds the dataset's Lucene index the way `hybrid index` does (Anserini's indexer, the
default BM25 settings; no vectors), then runs every query of its queries.jsonl through
Anserini's `SimpleSearcher.search` one at a time (the path hybrid used before) and through
hybrid's `LuceneSearcher` in batches of --batch, at each k. Reports queries whose ids or
scores differ (the goal is 0; scores are compared exactly and to 1e-6) and both paths'
milliseconds per query, measured in the same process, each path warmed up first.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, SHARED, machine, write_json


def read_dataset(path: Path) -> tuple[list[Any], list[str]]:
    from hybrid.types import Document

    docs = [json.loads(line) for line in (path / "corpus.jsonl").open()]
    queries = [json.loads(line)["text"] for line in (path / "queries.jsonl").open()]
    return [Document(id=str(d["_id"]), title=d.get("title", ""), text=d["text"]) for d in docs], queries


def compare(got: list[list[tuple[str, float]]], want: list[list[tuple[str, float]]]) -> dict[str, int]:
    ids = sum(1 for a, b in zip(got, want, strict=True) if [d for d, _ in a] != [d for d, _ in b])
    close = sum(
        1
        for a, b in zip(got, want, strict=True)
        if len(a) != len(b) or any(abs(x - y) > 1e-6 for (_, x), (_, y) in zip(a, b, strict=True))
    )
    exact = sum(1 for a, b in zip(got, want, strict=True) if a != b)
    return {"ids_differ": ids, "scores_differ_1e-6": close, "not_identical": exact}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", type=Path, default=SHARED / "scifact")
    parser.add_argument("--ks", default="10,100,1000")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "bm25_equal.json")
    args = parser.parse_args()

    from hybrid.backends.embedded.lucene import LuceneSearcher, build_lucene
    from hybrid.config import LexicalSettings
    from tests.anserini_reference import simple_search

    docs, queries = read_dataset(args.dataset)
    lexical = LexicalSettings()
    rows = []
    with tempfile.TemporaryDirectory(prefix="hybrid-bm25-equal-") as work:
        path = Path(work) / "lucene"
        build_lucene(path, (docs[i : i + 1000] for i in range(0, len(docs), 1000)), lexical, None)
        searcher = LuceneSearcher(path, lexical, None)
        simple_search(path, lexical, queries[:50], 100)  # both paths warmed up (JIT, caches)
        searcher.search(queries[:50], 100)
        for k in (int(k) for k in args.ks.split(",")):
            start = time.perf_counter()
            want = simple_search(path, lexical, queries, k)
            old_s = time.perf_counter() - start
            start = time.perf_counter()
            got = [
                row
                for i in range(0, len(queries), args.batch)
                for row in searcher.search(queries[i : i + args.batch], k)
            ]
            new_s = time.perf_counter() - start
            row = {
                "k": k,
                "queries": len(queries),
                **compare(got, want),
                "simple_searcher_ms": round(old_s / len(queries) * 1000, 2),
                "hybrid_ms": round(new_s / len(queries) * 1000, 2),
                "speedup": round(old_s / new_s, 2),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
        searcher.close()
    write_json(args.out, {"machine": machine(), "dataset": str(args.dataset), "docs": len(docs), "rows": rows})
    print("| k | queries | ids differ | scores differ (1e-6) | SimpleSearcher ms/query | hybrid ms/query | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['k']} | {r['queries']} | {r['ids_differ']} | {r['scores_differ_1e-6']} "
            f"| {r['simple_searcher_ms']} | {r['hybrid_ms']} | {r['speedup']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
