"""Benchmark: rank 0's own work in a 2-process CPU run, on its share of the cores or on all.

    python -m bench rank_alone --store S --index sf [--runs 2]

In a ``hybrid train --nproc 2`` run on CPU each process is given half the cores
(``OMP_NUM_THREADS``). After a refresh's shared encoding, rank 0 alone re-mines the
training queries and evaluates the dev set while rank 1 waits in a collective. This runs
exactly that library path (``run_mine`` with a freshly built refresh encoder, then
``dev_ndcg``) in a process started as a rank is (``OMP_NUM_THREADS`` = cores / 2), once
as before (``share``: the rank's threads) and once inside ``Distributed.alone`` (``all``:
every core, as the trainer now does), arms alternating. SciFact train queries are mined
and its test queries evaluated. Writes bench/results/rank_alone.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, SHARED, machine, write_json

SCIFACT = SHARED / "scifact"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, required=True, help="an embedded store holding --index (SciFact)")
    parser.add_argument("--index", default="sf")
    parser.add_argument("--runs", type=int, default=2, help="runs per arm, alternating")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "rank_alone.json")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // 2))}
    rows: list[dict[str, Any]] = []
    for run in range(args.runs):
        for arm in ("share", "all"):
            spec = {"store": str(args.store), "index": args.index, "arm": arm}
            done = subprocess.run(
                [sys.executable, __file__, "--arm", json.dumps(spec)], env=env, capture_output=True, text=True
            )
            if done.returncode != 0:
                raise SystemExit(f"arm {arm} failed:\n{done.stderr[-3000:]}")
            rows.append({"arm": arm, "run": run, **json.loads(done.stdout.strip().splitlines()[-1])})
            print(json.dumps(rows[-1]), flush=True)
    summary = {}
    print(f"\n{'arm':6} {'mine s':>8} {'dev eval s':>11} {'total s':>8}   (median of {args.runs})")
    for arm in ("share", "all"):
        mine = statistics.median(r["mine_s"] for r in rows if r["arm"] == arm)
        dev = statistics.median(r["dev_s"] for r in rows if r["arm"] == arm)
        summary[arm] = {"mine_s": mine, "dev_s": dev, "total_s": round(mine + dev, 1)}
        print(f"{arm:6} {mine:8.1f} {dev:11.1f} {mine + dev:8.1f}")
    ratio = summary["share"]["total_s"] / summary["all"]["total_s"]
    print(f"share / all: {ratio:.2f}x  ({cores} cores, each rank given {env['OMP_NUM_THREADS']})")
    write_json(
        args.out,
        {
            "machine": machine(),
            "args": {k: str(v) for k, v in vars(args).items()},
            "threads_per_rank": int(env["OMP_NUM_THREADS"]),
            "rows": rows,
            "median": summary,
            "share_over_all": round(ratio, 3),
        },
    )
    print(f"wrote {args.out}")
    return 0


def _arm(spec: dict[str, Any]) -> None:
    import logging
    import tempfile
    from contextlib import nullcontext

    import torch

    from hybrid.backends.embedded import EmbeddedBackend
    from hybrid.encoder import Encoder, EncoderConfig, cpu_threads
    from hybrid.mining import MineJob, run_mine
    from hybrid.training.distributed import Distributed
    from hybrid.training.refresh import dev_ndcg

    logging.disable(logging.WARNING)
    backend = EmbeddedBackend(Path(spec["store"]))
    index = spec["index"]
    recipe = backend.info(index).recipe or {}
    torch.set_num_threads(cpu_threads())  # as the trainer starts: this rank's share
    alone = Distributed(rank=0, world=2).alone() if spec["arm"] == "all" else nullcontext()
    with alone, tempfile.TemporaryDirectory() as tmp:
        model = str(recipe.get("model_path") or recipe["model"])
        # built as RunState.refresh_encoder builds it: with the threads the process has now
        encoder = Encoder(EncoderConfig(model=model, device="cpu", threads=torch.get_num_threads()))
        job = MineJob(
            index=index,
            queries=SCIFACT / "queries.jsonl",
            qrels=SCIFACT / "qrels" / "train.tsv",
            out=Path(tmp) / "pools.jsonl.gz",
        )
        started = time.perf_counter()
        run_mine(job, backend, encoder)
        mine_s = time.perf_counter() - started
        started = time.perf_counter()
        score = dev_ndcg(backend, index, (SCIFACT / "queries.jsonl", SCIFACT / "qrels" / "test.tsv"), encoder)
        dev_s = time.perf_counter() - started
        threads = torch.get_num_threads()
    backend.close()
    print(json.dumps({"mine_s": round(mine_s, 1), "dev_s": round(dev_s, 1), "threads": threads, "ndcg": score}))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--arm":
        _arm(json.loads(sys.argv[2]))
        raise SystemExit(0)
    raise SystemExit(main())
