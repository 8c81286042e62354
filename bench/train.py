"""Benchmark: does `hybrid train` improve SciFact, and does SimANS beat the other samplers?

Usage (from the repo root; reads ../shared/datasets/scifact):

    python -m bench train                                  # every arm, seeds 1-3 (hours on 2 CPU cores)
    python -m bench train --seeds 1 --arms simans,random   # a subset; results merge into the JSON
    python -m bench train --epochs 0.1 --seeds 1 --arms simans --out /tmp/t.json   # smoke run
    python -m bench train --knobs default,a=2,lr=1e-4 --seeds 1   # one knob at a time (below)

The index is built once as a user would (`hybrid index` defaults: all-MiniLM-L6-v2, its
256-token passages), and the **base row is that very index**. Every arm starts from a copy
of it, with the same pools (BM25 union kNN top-100, mined once with the base model), epochs,
batch, negatives per query, learning rate and seeds; each ends with the refresh that
re-embeds the corpus with the index's own settings, and is scored on the 300 test queries:
dense, and hybrid with BM25 (RRF k=60 and linear min-max 0.5/0.5). 100 training queries are
held out as dev (the learning curve); 709 train. Runs already in the JSON are skipped, so an
interrupted benchmark resumes. Writes bench/results/train.json; `python -m bench train_report`
makes the table and the learning-curve plot. The knobs of one run (--a, --b, --score-scale,
--depth, --negatives, --lr, --epochs, --batch-size) go to their own --out.

``--knobs`` studies what each knob does to SimANS, one at a time: the simans arm is trained
with the budget above except for one ``name=value`` per run (``default``: the unchanged
budget, so every row differs from it in exactly one thing), with the first of --seeds.
One seed per knob: read differences against the seed spread of the main study, not as
significant on their own. Writes bench/results/train_knobs.json; runs already there are
skipped.
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
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, SHARED, machine, write_json

SCIFACT = SHARED / "scifact"
ARMS = ("simans", "random", "topk", "percpos", "simans+refresh")
MODES = {"dense": ("dense", "rrf"), "hybrid_rrf": ("hybrid", "rrf"), "hybrid_linear": ("hybrid", "linear")}


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


def evaluate(backend: Any, qrels: Path) -> dict[str, Any]:
    """Test metrics per mode, with per-query nDCG@10 for the paired tests."""
    from hybrid.evaluation.evaluate import EvalJob, run_eval
    from hybrid.fusion import FusionConfig
    from hybrid.search import SearchConfig

    out: dict[str, Any] = {}
    for name, (mode, fusion) in MODES.items():
        search = SearchConfig(mode=mode, k=100, fusion=FusionConfig(method=fusion))  # type: ignore[arg-type]
        job = EvalJob(index="scifact", queries=SCIFACT / "queries.jsonl", qrels=qrels, search=search)
        report = run_eval(job, backend)
        out[name] = {
            "ndcg@10": report.metrics["ndcg@10"],
            "recall@100": report.metrics["recall@100"],
            "per_query": {q: v["ndcg@10"] for q, v in report.per_query.items()},
        }
    return out


def build_base(work: Path, held_out: int) -> dict[str, Any]:
    """The user's index (defaults), train/dev split and the pools every arm starts from."""
    from hybrid.backends.embedded import EmbeddedBackend
    from hybrid.encoder import Encoder
    from hybrid.indexing import IndexJob, run_index
    from hybrid.mining import MineJob, run_mine
    from hybrid.query_encoder import encoder_for_index

    t0 = time.perf_counter()
    backend = EmbeddedBackend(work / "base-store")
    encoder = Encoder()  # hybrid index's defaults: MiniLM, its own 256-token passages
    run_index(IndexJob(corpus=SCIFACT, index="scifact"), backend, encoder)
    train_qrels, dev_qrels = split_train(work, held_out, seed=0)
    pools = work / "pools.jsonl.gz"
    job = MineJob(index="scifact", queries=SCIFACT / "queries.jsonl", qrels=train_qrels, out=pools)
    run_mine(job, backend, encoder_for_index(backend, "scifact", batch=True))
    base = {"metrics": evaluate(backend, SCIFACT / "qrels" / "test.tsv"), "setup_s": round(time.perf_counter() - t0, 1)}
    base["recipe"] = backend.info("scifact").recipe
    backend.close()
    return {"train_qrels": train_qrels, "dev_qrels": dev_qrels, "pools": pools, "base": base}


def one_run(work: Path, setup: dict[str, Any], config: Any) -> dict[str, Any]:
    """Train from a copy of the base store (ends with the re-embedding refresh), evaluate."""
    from hybrid.backends.embedded import EmbeddedBackend
    from hybrid.training.trainer import train

    store = work / f"store-{config.out.name}"
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(work / "base-store", store)
    backend = EmbeddedBackend(store)
    started = time.perf_counter()
    result = train(config, backend)
    wall = time.perf_counter() - started
    metrics = evaluate(backend, SCIFACT / "qrels" / "test.tsv")
    recipe = backend.info("scifact").recipe or {}
    backend.close()
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(config.out, ignore_errors=True)
    return {
        "metrics": metrics,
        "dev_curve": result.dev,
        "plan": result.plan,
        "steps": result.steps,
        "wall_s": round(wall, 1),
        "examples_per_s": round(result.examples_per_s, 2),
        "final_loss": round(result.losses[-1], 4),
        "refreshes": [{k: r[k] for k in ("step", "index_s", "mine_s", "dev_ndcg@10")} for r in result.refreshes],
        "reembedded_passage_max_length": recipe.get("passage_max_length"),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def train_config(args: argparse.Namespace, setup: dict[str, Any], arm: str, seed: int, out: Path) -> Any:
    from hybrid.negatives import SamplerConfig
    from hybrid.training.config import TrainConfig

    name = arm.split("+")[0]
    sampler = SamplerConfig(
        name=name,  # type: ignore[arg-type]
        n=args.negatives,
        depth=args.depth,
        a=args.a,
        b=args.b,
        scale=args.score_scale,
    )
    steps_per_epoch = -(-709 // args.batch_size)
    return TrainConfig(
        index="scifact",
        queries=SCIFACT / "queries.jsonl",
        qrels=setup["train_qrels"],
        pools=setup["pools"],
        out=out,
        sampler=sampler,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        passage_max_length=128,
        grad_checkpointing=False,  # 32 x 4 passages fit in memory; checkpointing costs ~50 % more time
        seed=seed,
        log_every=5,
        save_every=0,
        refresh_every=max(1, int(steps_per_epoch * args.epochs) // 2) if arm.endswith("+refresh") else 0,
        refresh_at_end=True,
        dev_queries=SCIFACT / "queries.jsonl",
        dev_qrels=setup["dev_qrels"],
        device=args.device,
        precision=args.precision,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--negatives", type=int, default=3)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--a", type=float, default=0.5)
    parser.add_argument("--b", type=float, default=0.0)
    parser.add_argument("--score-scale", default="auto", help="'auto' (1/temperature = 20 here) or a number")
    parser.add_argument("--depth", type=int, default=100, help="pool depth the samplers draw from (mined: 100)")
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--held-out", type=int, default=100)
    parser.add_argument("--device", default=None)
    parser.add_argument("--precision", default="auto")
    parser.add_argument(
        "--knobs",
        default=None,
        help=f"one-knob study: comma-separated name=value and 'default' (the last study: {KNOBS})",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.knobs:
        return knob_study(args, parser)
    args.out = args.out or REPO / "bench" / "results" / "train.json"

    budget = {k: getattr(args, k) for k in ("epochs", "batch_size", "negatives", "lr", "a", "b", "held_out")}
    scale = "auto (20)" if args.score_scale == "auto" else float(args.score_scale)
    budget.update(temperature=0.05, score_scale=scale, train_passage_max_length=128, pool_depth=args.depth)
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if results and results.get("budget") != budget:
        print(f"{args.out} holds runs with another budget; use another --out", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="hybrid-bench-train-"))
    setup = build_base(work, args.held_out)
    dense = setup["base"]["metrics"]["dense"]["ndcg@10"]
    if results and abs(results["base"]["metrics"]["dense"]["ndcg@10"] - dense) > 1e-4:
        print("the rebuilt base index scores differently from the saved one; use another --out", file=sys.stderr)
        return 2
    results.setdefault("machine", machine())
    results["budget"] = budget
    results["base"] = setup["base"]
    results.setdefault("runs", {})
    print(json.dumps({"base": {m: v["ndcg@10"] for m, v in setup["base"]["metrics"].items()}}), flush=True)
    for seed in (int(s) for s in args.seeds.split(",")):
        for arm in args.arms.split(","):
            done = results["runs"].setdefault(arm, {})
            if str(seed) in done:
                continue
            run = one_run(work, setup, train_config(args, setup, arm, seed, work / f"{arm}-{seed}"))
            done[str(seed)] = run
            write_json(args.out, results)  # after every run: an interrupted benchmark keeps what it has
            print(json.dumps({arm: {"seed": seed, **{m: v["ndcg@10"] for m, v in run["metrics"].items()}}}), flush=True)
    from bench.train_report import print_table

    print_table(results)
    shutil.rmtree(work, ignore_errors=True)
    return 0


KNOBS = "default,score_scale=1,a=2,b=-2,depth=30,negatives=7,lr=1e-4,batch_size=64,epochs=4"
KNOB_NAMES = ("epochs", "batch_size", "negatives", "lr", "a", "b", "score_scale", "depth", "held_out")


def knob_study(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Train the simans arm once per knob, the budget otherwise the parser's defaults."""
    defaults = {name: parser.get_default(name) for name in KNOB_NAMES}
    out = args.out or REPO / "bench" / "results" / "train_knobs.json"
    seed = int(args.seeds.split(",")[0])
    results: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    work = Path(tempfile.mkdtemp(prefix="hybrid-bench-knobs-"))
    setup = build_base(work, defaults["held_out"])
    results.setdefault("machine", machine())
    results.update(seed=seed, defaults=defaults, base=setup["base"])
    results.setdefault("runs", {})
    for knob in args.knobs.split(","):
        if knob in results["runs"]:
            continue
        budget = dict(defaults)
        if knob != "default":
            name, _, value = knob.partition("=")
            if name not in defaults or not value:
                raise SystemExit(f"unknown knob '{knob}'; use name=value with name one of {', '.join(defaults)}")
            budget[name] = value if name == "score_scale" else type(defaults[name])(value)
        namespace = argparse.Namespace(**budget, device=args.device, precision=args.precision)
        config = train_config(namespace, setup, "simans", seed, work / f"run-{len(results['runs'])}")
        run = one_run(work, setup, config)
        results["runs"][knob] = {"budget": budget, **run}
        write_json(out, results)
        print(json.dumps({knob: {m: v["ndcg@10"] for m, v in run["metrics"].items()}}), flush=True)
    from bench.train_report import print_knobs

    print_knobs(results)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
