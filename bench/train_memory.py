"""Benchmark: does `hybrid train --max-memory` hold the process to its budget, and at what speed?

Usage (from the repo root; reads ../shared/datasets/scifact):

    python -m bench train_memory                      # budgets 2, 4, 8 GiB; 200 queries, 2 steps of 4
    python -m bench train_memory --budgets 3GiB --steps 3 --batch-size 16

A slice of SciFact is indexed once as `hybrid index` would (all-MiniLM-L6-v2, its
256-token passages): the first ``--queries`` training queries' positives plus random
documents up to ``--docs``; pools are mined once with `hybrid mine`. Then one `hybrid
train` process per budget runs ``--steps`` steps with the default options but
``--batch-size`` (the default 32 queries x 8 texts takes minutes a step on a 2-core CPU)
and without the guard and the final refresh (neither is what the budget bounds). Each
process's peak resident memory (the kernel's high-water mark) and peak anonymous memory
(sampled; what the process allocated, not mapped files) are recorded beside the budget,
the chunk and estimate the run chose, and its training examples/s. Writes
bench/results/train_memory.json.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, SHARED, machine, run_measured, write_json

SCIFACT = SHARED / "scifact"
HYBRID = [sys.executable, "-m", "hybrid.cli"]


def make_slice(work: Path, queries: int, docs: int, seed: int) -> tuple[Path, Path, Path]:
    """Corpus, queries and qrels of the first ``queries`` training queries (by id)."""
    from hybrid.corpus import read_qrels

    qrels = read_qrels(SCIFACT / "qrels" / "train.tsv")
    chosen = sorted(qrels, key=lambda q: int(q) if q.isdigit() else q)[:queries]
    wanted = {d for q in chosen for d in qrels[q]}
    lines = (SCIFACT / "corpus.jsonl").read_text().splitlines()
    others = [line for line in lines if json.loads(line)["_id"] not in wanted]
    random.Random(seed).shuffle(others)
    keep = [line for line in lines if json.loads(line)["_id"] in wanted] + others[: max(0, docs - len(wanted))]
    corpus, query_file, qrels_file = work / "corpus.jsonl", work / "queries.jsonl", work / "qrels.tsv"
    corpus.write_text("\n".join(keep) + "\n")
    chosen_set = set(chosen)
    query_lines = (SCIFACT / "queries.jsonl").read_text().splitlines()
    query_lines = [line for line in query_lines if json.loads(line)["_id"] in chosen_set]
    query_file.write_text("\n".join(query_lines) + "\n")
    rows = [f"{q}\t{d}\t{g}" for q in chosen for d, g in sorted(qrels[q].items())]
    qrels_file.write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    return corpus, query_file, qrels_file


def train_row(args: argparse.Namespace, work: Path, budget: str, files: dict[str, Path]) -> dict[str, Any]:
    out = work / f"run-{budget}"
    command = [
        *HYBRID,
        "train",
        "-i",
        "slice",
        "--queries",
        str(files["queries"]),
        "--qrels",
        str(files["qrels"]),
        "--pools",
        str(files["pools"]),
        "--out",
        str(out),
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--max-memory",
        budget,
        "--no-guard",
        "--no-refresh-at-end",
        "--store",
        str(work / "store"),
        "-q",
    ]
    status, rss, anon, seconds = run_measured(command)
    if status != 0:
        raise SystemExit(f"hybrid train --max-memory {budget} failed with status {status}")
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    memory = log[0]["plan"]["memory"]
    last = [r for r in log if "step" in r][-1]
    return {
        "budget": budget,
        "chunk": memory["chunk"],
        "checkpointing": memory["checkpointing"],
        "estimate_mib": round(memory["estimate"] / 2**20),
        "peak_rss_mib": round(rss),
        "peak_anon_mib": round(anon),
        "examples_per_s": last["examples_per_s"],
        "process_s": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="2GiB,4GiB,8GiB")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "train_memory.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="train-memory-") as tmp:
        work = Path(tmp)
        corpus, queries, qrels = make_slice(work, args.queries, args.docs, seed=1)
        store = ["--store", str(work / "store")]
        subprocess.run([*HYBRID, "index", str(corpus), "-i", "slice", "-q", *store], check=True, cwd=REPO)
        pools = work / "pools.jsonl.gz"
        labels = ["--queries", str(queries), "--qrels", str(qrels)]
        subprocess.run([*HYBRID, "mine", "-i", "slice", *labels, "--out", str(pools), "-q", *store], check=True)
        files = {"queries": queries, "qrels": qrels, "pools": pools}
        for budget in args.budgets.split(","):
            rows.append(train_row(args, work, budget, files))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'budget':>7} {'chunk':>6} {'ckpt':>5} {'estimate':>9} {'peak RSS':>9} {'peak anon':>10} {'ex/s':>6}")
    for r in rows:
        print(
            f"{r['budget']:>7} {r['chunk'] or '-':>6} {'on' if r['checkpointing'] else 'off':>5} "
            f"{r['estimate_mib']:>6} MiB {r['peak_rss_mib']:>5} MiB {r['peak_anon_mib']:>6} MiB "
            f"{r['examples_per_s']:>6}"
        )
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    command = "python -m bench train_memory " + " ".join(sys.argv[1:])
    write_json(args.out, {"command": command.strip(), "settings": settings, "machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
