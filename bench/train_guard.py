"""Benchmark: the training guard and the many-positive options, on NFCorpus and SciFact.

Usage (from the repo root; reads ../shared/datasets):

    python -m bench train_guard --dataset nfcorpus --arms simans,simans+multi --seeds 1
    python -m bench train_guard --dataset scifact --arms simans,query,query+random --seeds 1,2,3
    python -m bench train_guard --dataset nfcorpus --arms query,query+random,query+multi,query+distill --seeds 1,2,3

The index is built once as a user would (`hybrid index` defaults: all-MiniLM-L6-v2, its
256-token passages and queries) and the **base row is that very index**. Pools are mined
once (BM25 union kNN top-100 over the training queries); every arm starts from a copy of
the base store with the same budget (steps, batch, negatives, lr, training at the index's
passage length). Each arm trains with the guard as shipped: its dev split is carved from
the *training* queries (10 %, at least 50), so the split reported here (NFCorpus dev,
SciFact test) is never seen by the choice. Two figures per arm: **raw**, the final model
re-embedded into the index (what an unguarded run leaves), and **guarded**, what the guard
left (the base when nothing won). Dense nDCG@10 and R@100, hybrid RRF nDCG@10, paired
randomization p against the base. Runs already in the JSON are skipped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, SHARED, machine, write_json

DATASETS = {
    "nfcorpus": (SHARED / "nfcorpus-train-dev", "train.tsv", "dev.tsv"),
    "scifact": (SHARED / "scifact", "train.tsv", "test.tsv"),
}
ARMS: dict[str, dict[str, Any]] = {
    "random": {"sampler": "random"},
    "simans": {},
    "simans+multi": {"positives": "all", "positives_per_query": 2},
    "simans+distill": {"distill": 1.0},
    "simans+multi+distill": {"positives": "all", "positives_per_query": 2, "distill": 1.0},
    "simans@128": {"passage_max_length": 128},  # trained on shorter passages than the index embeds
    "query": {"update": "query"},
    "query+random": {"update": "query", "sampler": "random"},
    "query+multi": {"update": "query", "positives": "all", "positives_per_query": 2},
    "query+distill": {"update": "query", "distill": 1.0},
    "query+max": {"update": "query", "anchor": "max"},
    "query+mean": {"update": "query", "anchor": "mean"},
}
INDEX = "corpus"


def evaluate(backend: Any, data: Path, qrels: Path) -> dict[str, Any]:
    """Dense (nDCG@10, R@100, per query) and hybrid RRF nDCG@10 on the reported split."""
    from hybrid.evaluation.evaluate import EvalJob, run_eval
    from hybrid.search import SearchConfig

    out: dict[str, Any] = {}
    for mode in ("dense", "hybrid"):
        job = EvalJob(index=INDEX, queries=data / "queries.jsonl", qrels=qrels, search=SearchConfig(mode=mode, k=100))
        report = run_eval(job, backend)
        out[mode] = {
            "ndcg@10": report.metrics["ndcg@10"],
            "recall@100": report.metrics["recall@100"],
            "per_query": {q: v["ndcg@10"] for q, v in report.per_query.items()},
        }
    return out


def build_base(work: Path, dataset: str) -> dict[str, Any]:
    from hybrid.backends.embedded import EmbeddedBackend
    from hybrid.encoder import Encoder
    from hybrid.indexing import IndexJob, run_index

    data, _train, report = DATASETS[dataset]
    started = time.perf_counter()
    backend = EmbeddedBackend(work / "base-store")
    if not backend.exists(INDEX):  # a --work folder of an earlier run keeps its base index
        run_index(IndexJob(corpus=data, index=INDEX), backend, Encoder())
    base = {"metrics": evaluate(backend, data, data / "qrels" / report), "recipe": backend.info(INDEX).recipe}
    base["setup_s"] = round(time.perf_counter() - started, 1)
    backend.close()
    return {"base": base}


def train_config(args: argparse.Namespace, arm: str, seed: int, out: Path) -> Any:
    from hybrid.negatives import SamplerConfig
    from hybrid.training.config import TrainConfig
    from hybrid.training.memory import default_budget, machine_memory

    data, train, _ = DATASETS[args.dataset]
    options = dict(ARMS[arm])
    sampler = SamplerConfig(name=options.pop("sampler", "simans"), anchor=options.pop("anchor", "sampled"))
    if args.negatives is not None:
        sampler = SamplerConfig(name=sampler.name, anchor=sampler.anchor, n=args.negatives)
    budget = {k: getattr(args, k) for k in ("steps", "epochs", "batch_size", "lr") if getattr(args, k) is not None}
    return TrainConfig(
        index=INDEX,
        queries=data / "queries.jsonl",
        qrels=data / "qrels" / train,
        out=out,
        sampler=sampler,
        seed=seed,
        log_every=10,
        save_every=0,
        max_memory=default_budget(machine_memory()),  # as `hybrid train` resolves it when no --max-memory is given
        **budget,
        **options,
    )


def resolved_budget(args: argparse.Namespace) -> dict[str, Any]:
    """The budget every arm runs at: the flags given, else `hybrid train`'s defaults."""
    from hybrid.negatives import SamplerConfig
    from hybrid.training.config import DEFAULT_EPOCHS, TrainConfig

    defaults = TrainConfig.__dataclass_fields__
    budget = {k: getattr(args, k) for k in ("steps", "batch_size", "lr")}
    budget = {k: v if v is not None else defaults[k].default for k, v in budget.items()}
    budget["negatives"] = args.negatives if args.negatives is not None else SamplerConfig().n
    if budget["steps"] is None:
        budget["epochs"] = args.epochs if args.epochs is not None else DEFAULT_EPOCHS
    return budget


def paired(base: dict[str, float], run: dict[str, float]) -> float:
    import numpy as np

    from hybrid.evaluation.compare import paired_randomization_test

    qids = sorted(base)
    return paired_randomization_test(np.array([base[q] for q in qids]), np.array([run.get(q, 0.0) for q in qids]))


def one_run(work: Path, args: argparse.Namespace, arm: str, seed: int, base: dict[str, Any]) -> dict[str, Any]:
    """Train with the guard from a copy of the base store; score what it left, then the raw final model."""
    from hybrid.backends.embedded import EmbeddedBackend
    from hybrid.manifest import VectorRecipe
    from hybrid.training.refresh import reembed
    from hybrid.training.setup import recipe_encoder
    from hybrid.training.trainer import train

    data, _, report = DATASETS[args.dataset]
    reembed_s: float | None = None  # a full arm's re-embed, timed when the guard did not already do it
    store = work / f"store-{arm}-{seed}"
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(work / "base-store", store)
    backend = EmbeddedBackend(store)
    config = train_config(args, arm, seed, work / f"run-{arm}-{seed}")
    started = time.perf_counter()
    result = train(config, backend)
    wall = time.perf_counter() - started
    decision = result.guard
    guarded = evaluate(backend, data, data / "qrels" / report) if decision and decision.replace else base["metrics"]
    chose_final = bool(decision and decision.replace and decision.chosen == str(result.final))
    if chose_final:
        raw = guarded
    elif config.update == "query":  # the final query model applied: still no re-embedding
        from hybrid.training.query_side import apply_query_model

        apply_query_model(backend, INDEX, result.final, str(result.final))
        raw = evaluate(backend, data, data / "qrels" / report)
    else:
        import torch

        recipe = VectorRecipe.from_dict(base["recipe"])
        assert recipe is not None
        embed_started = time.perf_counter()
        reembed(backend, INDEX, recipe_encoder(result.final, recipe, torch.device("cpu")))
        reembed_s = time.perf_counter() - embed_started
        raw = evaluate(backend, data, data / "qrels" / report)
    backend.close()
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(config.out, ignore_errors=True)
    out: dict[str, Any] = {"wall_s": round(wall, 1), "examples_per_s": round(result.examples_per_s, 2)}
    out["train_s"] = round(result.train_seconds, 1)
    # What a user pays to have this arm's model serve: the run, plus the re-embed the guard did not do.
    out["reembed_s"] = None if reembed_s is None else round(reembed_s, 1)
    out["to_serving_s"] = round(wall + (reembed_s or 0.0), 1)
    out["guard"] = decision.__dict__ if decision else None
    out["raw"], out["guarded"] = row(raw, base), row(guarded, base)
    return out


def row(metrics: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """One model's figures on the reported split, with the paired p against the base."""
    return {
        "dense_ndcg@10": metrics["dense"]["ndcg@10"],
        "dense_recall@100": metrics["dense"]["recall@100"],
        "hybrid_ndcg@10": metrics["hybrid"]["ndcg@10"],
        "p_dense": paired(base["metrics"]["dense"]["per_query"], metrics["dense"]["per_query"]),
        "per_query": metrics["dense"]["per_query"],
    }


def print_table(results: dict[str, Any]) -> None:
    base = results["base"]["metrics"]
    print("| arm (seed) | what | dense nDCG@10 | p vs base | R@100 | hybrid RRF nDCG@10 | guard's choice |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| base | the index | {base['dense']['ndcg@10']:.4f} | - | {base['dense']['recall@100']:.4f} "
        f"| {base['hybrid']['ndcg@10']:.4f} | - |"
    )
    for arm, seeds in results["runs"].items():
        for seed, run in seeds.items():
            guard = run["guard"] or {}
            for what in ("raw", "guarded"):
                row = run[what]
                choice = (
                    f"{guard.get('best')} {guard.get('best_ndcg', 0):.4f} vs {guard.get('base', 0):.4f}, "
                    f"p {guard.get('p_value', 1):.3f}: {'replace' if guard.get('replace') else 'keep'}"
                    if what == "guarded" and guard
                    else ""
                )
                print(
                    f"| {arm} ({seed}) | {what} | {row['dense_ndcg@10']:.4f} | {row['p_dense']:.3f} "
                    f"| {row['dense_recall@100']:.4f} | {row['hybrid_ndcg@10']:.4f} | {choice} |"
                )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="nfcorpus")
    parser.add_argument("--arms", default="simans,simans+multi")
    parser.add_argument("--seeds", default="1")
    # Unset: `hybrid train`'s own defaults (DEFAULT_EPOCHS); the NFCorpus study ran at
    # --steps 150 --batch-size 8 --lr 5e-5.
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--epochs", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--negatives", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (kept; reuses its base index)")
    args = parser.parse_args()
    out = args.out or REPO / "bench" / "results" / f"train_guard_{args.dataset}.json"
    budget = resolved_budget(args)
    results: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    if results and results.get("budget") != budget:
        print(f"{out} holds runs with another budget; use another --out", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="hybrid-bench-guard-"))
    setup = build_base(work, args.dataset)
    results.update(machine=results.get("machine") or machine(), budget=budget, base=setup["base"])
    results.setdefault("runs", {})
    print(json.dumps({"base": {m: round(v["ndcg@10"], 4) for m, v in setup["base"]["metrics"].items()}}), flush=True)
    for seed in (int(s) for s in args.seeds.split(",")):
        for arm in args.arms.split(","):
            done = results["runs"].setdefault(arm, {})
            if str(seed) in done:
                continue
            done[str(seed)] = one_run(work, args, arm, seed, setup["base"])
            write_json(out, results)
            row = done[str(seed)]
            print(
                json.dumps({arm: seed, "raw": row["raw"]["dense_ndcg@10"], "guarded": row["guarded"]["dense_ndcg@10"]})
            )
    print_table(results)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
