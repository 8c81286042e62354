"""Benchmark: does SimANS beat the other samplers on SciFact? Equal budgets, 3 seeds.

Usage (from the repo root; reads ../shared/datasets/scifact):

    python bench/train.py                       # full run (about an hour on 2 CPU cores)
    python bench/train.py --steps 2 --seeds 1 --arms simans --no-tune   # smoke run

Arms: base (no training), random, topk, percpos, simans, simans+refresh; every trained arm
gets the same steps, batch, negatives per query and learning rate. SimANS's a and b are
tuned on 100 held-out *train* queries (never on test) with one seed; the other 709 train
queries train every arm. Each run re-embeds the corpus with its final model and is scored
on the 300 test queries: dense alone and hybrid (RRF) with BM25. Writes
bench/results/train.json and bench/results/train.png.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, SHARED, machine, write_json

SCIFACT = SHARED / "scifact"
ARMS = ("random", "topk", "percpos", "simans", "simans+refresh")


def split_train(work: Path, held_out: int, seed: int) -> tuple[Path, Path]:
    """Write train qrels without ``held_out`` queries, and those queries' dev qrels."""
    from hybrid.corpus import read_qrels

    qrels = read_qrels(SCIFACT / "qrels" / "train.tsv")
    qids = sorted(qrels)
    random.Random(seed).shuffle(qids)
    dev = set(qids[:held_out])
    train_file, dev_file = work / "train-qrels.tsv", work / "dev-qrels.tsv"
    for path, keep in ((train_file, lambda q: q not in dev), (dev_file, lambda q: q in dev)):
        with path.open("w") as fh:
            fh.write("query-id\tcorpus-id\tscore\n")
            for q in sorted(qrels):
                if keep(q):
                    for d, g in sorted(qrels[q].items()):
                        fh.write(f"{q}\t{d}\t{g}\n")
    return train_file, dev_file


def evaluate(backend: Any, qrels: Path, modes: tuple[str, ...] = ("dense", "hybrid")) -> dict[str, dict[str, float]]:
    from hybrid.evaluation.evaluate import EvalJob, run_eval
    from hybrid.search import SearchConfig

    out = {}
    for mode in modes:
        job = EvalJob(
            index="scifact", queries=SCIFACT / "queries.jsonl", qrels=qrels, search=SearchConfig(mode=mode, k=100)
        )  # type: ignore[arg-type]
        report = run_eval(job, backend)
        out[mode] = {"ndcg@10": report.metrics["ndcg@10"], "recall@100": report.metrics["recall@100"]}
    return out


def one_run(base_store: Path, work: Path, config: Any, qrels: Path) -> dict[str, Any]:
    """Train from a copy of the base store, re-embed with the final model, evaluate."""
    from hybrid.backends.embedded import EmbeddedBackend
    from hybrid.training.trainer import train

    store = work / f"store-{config.out.name}"
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(base_store, store)
    backend = EmbeddedBackend(store)
    started = time.perf_counter()
    result = train(config, backend)
    wall = time.perf_counter() - started
    metrics = evaluate(backend, qrels)
    backend.close()
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(config.out, ignore_errors=True)
    return {
        "metrics": metrics,
        "wall_s": round(wall, 1),
        "examples_per_s": round(result.examples_per_s, 2),
        "final_loss": round(result.losses[-1], 4),
        "refreshes": len(result.refreshes),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--negatives", type=int, default=3)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--passage-max-length", type=int, default=128)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--held-out", type=int, default=100)
    parser.add_argument("--no-tune", action="store_true", help="skip tuning; use --a/--b")
    parser.add_argument("--a", type=float, default=0.5)
    parser.add_argument("--b", type=float, default=0.0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "train.json")
    args = parser.parse_args()

    from hybrid.backends.embedded import EmbeddedBackend
    from hybrid.encoder import Encoder, EncoderConfig
    from hybrid.indexing import IndexJob, run_index
    from hybrid.mining import MineJob, run_mine
    from hybrid.negatives import SamplerConfig
    from hybrid.training.config import TrainConfig

    work = Path(tempfile.mkdtemp(prefix="hybrid-bench-train-"))
    base_store = work / "base-store"
    t0 = time.perf_counter()
    backend = EmbeddedBackend(base_store)
    encoder = Encoder(EncoderConfig(passage_max_length=args.passage_max_length))
    run_index(IndexJob(corpus=SCIFACT, index="scifact"), backend, encoder)
    train_qrels, dev_qrels = split_train(work, args.held_out, seed=0)
    pools = work / "pools.jsonl.gz"
    run_mine(
        MineJob(index="scifact", queries=SCIFACT / "queries.jsonl", qrels=train_qrels, out=pools), backend, encoder
    )
    test_qrels = SCIFACT / "qrels" / "test.tsv"
    results: dict[str, Any] = {
        "machine": machine(),
        "setup_s": round(time.perf_counter() - t0, 1),
        "budget": {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "negatives": args.negatives,
            "lr": args.lr,
            "passage_max_length": args.passage_max_length,
            "temperature": 0.05,
            "seeds": args.seeds,
            "train_queries": 809 - args.held_out,
        },
        "base": {"metrics": evaluate(backend, test_qrels), "dev": evaluate(backend, dev_qrels, ("dense",))},
        "runs": {},
    }
    backend.close()
    print(json.dumps({"base": results["base"]}), flush=True)

    # SimANS on the logit scale the loss sees (1 / temperature = 20), as in the paper's dot products.
    base_sampler = SamplerConfig(n=args.negatives, depth=100, scale=20.0)
    common = {
        "index": "scifact",
        "queries": SCIFACT / "queries.jsonl",
        "qrels": train_qrels,
        "pools": pools,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "log_every": 5,
        "save_every": 0,
        "passage_max_length": args.passage_max_length,
        "refresh_at_end": True,
    }
    a, b = args.a, args.b
    if not args.no_tune:
        tuning = {}
        for ta, tb in ((0.5, 0.0), (0.1, 0.0), (0.5, -2.0)):
            sampler = replace(base_sampler, name="simans", a=ta, b=tb)
            cfg = TrainConfig(**common, out=work / f"tune-{ta}-{tb}", sampler=sampler, seed=1)
            run = one_run(base_store, work, cfg, dev_qrels)
            tuning[f"a={ta},b={tb}"] = run["metrics"]["dense"]["ndcg@10"]
            print(json.dumps({"tune": {f"a={ta},b={tb}": run["metrics"]}}), flush=True)
        results["tuning_dev_ndcg@10"] = tuning
        a, b = (float(x.split("=")[1]) for x in max(tuning, key=tuning.get).split(","))  # type: ignore[arg-type]
    results["simans"] = {"a": a, "b": b, "scale": 20.0, "kernel": "squared"}
    for arm in args.arms.split(","):
        name = arm.split("+")[0]
        sampler = replace(base_sampler, name=name, a=a, b=b)  # type: ignore[arg-type]
        runs = []
        for seed in range(1, args.seeds + 1):
            cfg = TrainConfig(
                **common,
                out=work / f"{arm}-{seed}",
                sampler=sampler,
                seed=seed,
                refresh_every=args.steps // 2 if arm.endswith("+refresh") else 0,
            )
            runs.append(one_run(base_store, work, cfg, test_qrels))
            print(json.dumps({arm: runs[-1]}), flush=True)
        results["runs"][arm] = runs
    write_json(args.out, results)
    print_table(results)
    shutil.rmtree(work, ignore_errors=True)
    return 0


def summarise(runs: list[dict[str, Any]], mode: str, metric: str) -> tuple[float, float]:
    import numpy as np

    values = np.array([r["metrics"][mode][metric] for r in runs])
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def print_table(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="SciFact test, all-MiniLM-L6-v2 fine-tuned (mean ± std over seeds)")
    for col in ("arm", "dense nDCG@10", "dense R@100", "hybrid nDCG@10", "hybrid R@100", "wall s", "ex/s"):
        table.add_column(col)
    base = results["base"]["metrics"]
    table.add_row(
        "base",
        f"{base['dense']['ndcg@10']:.4f}",
        f"{base['dense']['recall@100']:.4f}",
        f"{base['hybrid']['ndcg@10']:.4f}",
        f"{base['hybrid']['recall@100']:.4f}",
        "-",
        "-",
    )
    for arm, runs in results["runs"].items():
        cells = [
            f"{m:.4f} ± {s:.4f}"
            for m, s in (
                summarise(runs, mode, metric) for mode in ("dense", "hybrid") for metric in ("ndcg@10", "recall@100")
            )
        ]
        wall = sum(r["wall_s"] for r in runs) / len(runs)
        rate = sum(r["examples_per_s"] for r in runs) / len(runs)
        table.add_row(arm, *cells, f"{wall:.0f}", f"{rate:.2f}")
    Console().print(table)


if __name__ == "__main__":
    sys.exit(main())
