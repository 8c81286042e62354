"""Benchmark: training throughput of `hybrid train` against sentence-transformers, same run.

    python -m bench train_peer --store DIR [--index scifact] [--steps 12] [--batch 32] [--negatives 7]
    python -m bench train_peer --store DIR --index msmarco --queries Q.tsv --qrels QRELS  # short passages

Both arms train all-MiniLM-L6-v2 on the *same examples in the same order*: training
queries (SciFact train by default), each with its positive and ``--negatives`` SimANS
negatives drawn by hybrid from pools mined on the index (mined once, cached under
``--work``). Same loss (softmax over
the query's positive, its negatives and every other passage in the batch; scale 20 =
temperature 0.05), same optimizer (AdamW 2e-5, weight decay 0.01 off biases and
LayerNorms, 10 % warmup then linear decay, gradient clipping at 1), same lengths
(``--query-len``, ``--passage-len``: 64 and 128 tokens unless given), fp32 on the CPU.

- sentence-transformers: ``MultipleNegativesRankingLoss`` on the model loaded with
  ``SentenceTransformer``, in a plain loop (tokenize the columns with ``model.tokenize``,
  loss, backward, step): the peer's own per-step work without its Trainer's overhead,
  which only favours the peer.
- sentence-transformers, ``st-cached``: ``CachedMultipleNegativesRankingLoss`` (mini-batch
  32), the form its docs recommend for large batches: the GradCache peer of
  ``hybrid-budget`` (the memory budget ``hybrid train`` picks here) and ``hybrid-cN``
  (GradCache chunks of N texts).
- hybrid: ``hybrid train``'s library path, pools given, no refresh.

Examples/s per arm from the step times after the first (warm-up) step, arms alternating
over ``--repeats``; the ratio hybrid / sentence-transformers. Writes
bench/results/train_peer.json.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, SHARED, machine, write_json

SCIFACT = SHARED / "scifact"
LR, TEMPERATURE = 2e-5, 0.05
PEER_MINI_BATCH = 32  # CachedMultipleNegativesRankingLoss's default mini_batch_size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, required=True, help="embedded store holding the SciFact index")
    parser.add_argument("--index", default="scifact")
    parser.add_argument("--queries", type=Path, default=SCIFACT / "queries.jsonl")
    parser.add_argument("--qrels", type=Path, default=SCIFACT / "qrels" / "train.tsv")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--negatives", type=int, default=7)
    parser.add_argument("--query-len", type=int, default=64, help="query tokens, both arms")
    parser.add_argument("--passage-len", type=int, default=128, help="passage tokens, both arms")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--arms",
        default="st,hybrid",
        help="st (MNRL), st-cached (CachedMNRL, mini-batch 32), hybrid (no budget), hybrid-ckpt "
        "(--grad-checkpointing), hybrid-budget (the --max-memory `hybrid train` picks on this machine), "
        "hybrid-cN (--grad-cache-chunk N), cli-1 and cli-2 (`hybrid train` as a command, one process or "
        "--nproc 2: examples/s over all steps, from its log)",
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/hybrid-train-peer"))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "train_peer.json")
    args = parser.parse_args()

    import logging

    import torch

    from hybrid.backends.embedded import EmbeddedBackend
    from hybrid.manifest import VectorRecipe

    logging.disable(logging.WARNING)
    torch.manual_seed(0)
    backend = EmbeddedBackend(args.store)
    pools = _pools(backend, args.index, args.work, args.queries, args.qrels)
    examples = _examples(backend, args.index, pools, args.steps, args.batch, args.negatives)
    model_dir = str(VectorRecipe.from_dict(backend.info(args.index).recipe).model_dir())  # hybrid starts there
    lengths = (args.query_len, args.passage_len)
    parity = _parity(model_dir, examples[0], args.negatives, lengths)
    print(f"same loss, dropout off, first batch: sentence-transformers {parity[0]:.6f}, hybrid {parity[1]:.6f}")
    arms = args.arms.split(",")
    rates: dict[str, list[float]] = {arm: [] for arm in arms}
    losses: dict[str, list[float]] = {arm: [] for arm in arms}
    for repeat in range(args.repeats):
        for arm in arms if repeat % 2 == 0 else arms[::-1]:
            if arm.startswith("cli-"):
                rate, loss = _train_cli(args, pools, int(arm[4:]))
                rates[arm].append(rate)
                losses[arm] = loss
                print(f"{arm:15} run {repeat + 1}: {rate:6.2f} examples/s  (all steps)", flush=True)
                continue
            if arm in ("st", "st-cached"):
                step_s, loss = _train_st(model_dir, examples, lengths, cached=arm == "st-cached")
            else:
                step_s, loss = _train_hybrid(backend, args, pools, arm)
            rates[arm].append(args.batch / statistics.mean(step_s[1:]))
            losses[arm] = loss
            print(f"{arm:15} run {repeat + 1}: {rates[arm][-1]:6.2f} examples/s  (step s: {_fmt(step_s)})", flush=True)
    backend.close()

    med = {arm: statistics.median(values) for arm, values in rates.items()}
    peer = next((arm for arm in ("st", "st-cached") if arm in med), None)  # the reference of the ratios
    print(f"\n{'arm':15} {'examples/s':>10} {'vs ' + (peer or 'ST'):>9}  last losses")
    for arm in arms:
        ratio = med[arm] / med[peer] if peer else float("nan")
        print(f"{arm:15} {med[arm]:10.2f} {ratio:9.2f}  {_fmt(losses[arm][-3:], 3)}")
    write_json(
        args.out,
        {
            "machine": machine(),
            "args": {k: str(v) for k, v in vars(args).items()},
            "examples_per_s": rates,
            "median": med,
            "ratio_vs": peer,
            "ratio_vs_st": {arm: round(med[arm] / med[peer], 3) for arm in arms} if peer else {},
            "losses": losses,
            "loss_parity_first_batch": parity,
        },
    )
    print(f"wrote {args.out}")
    return 0


def _fmt(values: list[float], digits: int = 2) -> str:
    return " ".join(f"{v:.{digits}f}" for v in values)


def _pools(backend: Any, index: str, work: Path, queries: Path, qrels: Path) -> Path:
    from hybrid.mining import MineJob, run_mine
    from hybrid.query_encoder import encoder_for_index

    work.mkdir(parents=True, exist_ok=True)
    pools = work / f"{index}-{backend.current(index)}.jsonl.gz"
    if not pools.is_file():
        print(f"mining pools for {queries.name} (setup, not timed)", flush=True)
        job = MineJob(index=index, queries=queries, qrels=qrels, out=pools)
        run_mine(job, backend, encoder_for_index(backend, index, batch=True))
    return pools


def _sampler(pools: Path, negatives: int) -> Any:
    from hybrid.diagnostics import resolve_for_pools
    from hybrid.negatives import SamplerConfig

    return resolve_for_pools(pools, SamplerConfig(n=negatives), TEMPERATURE)


def _examples(backend: Any, index: str, pools: Path, steps: int, batch: int, negatives: int) -> list[list[Any]]:
    """The texts hybrid's sampler gives each step: [(query, positive, negative, ...)] per step."""
    from hybrid.training.data import PoolData

    data = PoolData(pools, _sampler(pools, negatives), seed=13)  # hybrid train's default seed
    out = []
    for step in range(steps):
        rows = data.batch(step, batch)
        docs = backend.get(index, sorted({d for ex in rows for d in (ex.positive, *ex.negatives)}))
        text = {d: f"{doc.title} {doc.text}" if doc.title else doc.text for d, doc in docs.items()}
        out.append([(ex.query, text[ex.positive], *(text[n] for n in ex.negatives)) for ex in rows])
    return out


def _parity(model_dir: str, rows: list[Any], negatives: int, lengths: tuple[int, int]) -> tuple[float, float]:
    """Both losses on one batch with dropout off (hybrid's masking of labelled positives
    aside, which MNRL lacks): the arms compute the same function."""
    from dataclasses import replace

    import torch
    from sentence_transformers import SentenceTransformer

    from hybrid.encoder import load_settings
    from hybrid.training.model import DualEncoder, contrastive_loss

    st = SentenceTransformer(model_dir, device="cpu").eval()
    features = []
    for i, column in enumerate(zip(*rows, strict=True)):
        st.max_seq_length = lengths[i > 0]
        features.append(st.tokenize(list(column)))
    settings = replace(load_settings(Path(model_dir)), query_max_length=lengths[0], passage_max_length=lengths[1])
    model = DualEncoder(Path(model_dir), settings).eval()
    cpu = torch.device("cpu")
    group = negatives + 1
    with torch.no_grad():
        peer = _mnrl()(st, scale=1 / TEMPERATURE)(features, None)
        q = model.embed([r[0] for r in rows], True, cpu)
        p = model.embed([t for r in rows for t in r[1:]], False, cpu)
        ours = contrastive_loss(
            q, p, torch.arange(len(rows)) * group, torch.arange(len(rows)).repeat_interleave(group), TEMPERATURE, True
        )
    return float(peer), float(ours)


def _mnrl(cached: bool = False) -> Any:
    """sentence-transformers' MultipleNegativesRankingLoss, or its GradCache form."""
    name = "CachedMultipleNegativesRankingLoss" if cached else "MultipleNegativesRankingLoss"
    try:
        from sentence_transformers.sentence_transformer import losses
    except ImportError:  # sentence-transformers before 6
        from sentence_transformers import losses
    return getattr(losses, name)


def _train_st(
    model_dir: str, examples: list[list[Any]], lengths: tuple[int, int], cached: bool
) -> tuple[list[float], list[float]]:
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device="cpu")
    extra = {"mini_batch_size": PEER_MINI_BATCH} if cached else {}
    loss_fn = _mnrl(cached)(model, scale=1 / TEMPERATURE, **extra)
    decay = [p for n, p in model.named_parameters() if not (p.ndim < 2 or "LayerNorm" in n or n.endswith("bias"))]
    rest = [p for n, p in model.named_parameters() if p.ndim < 2 or "LayerNorm" in n or n.endswith("bias")]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}], lr=LR
    )
    warmup = max(1, round(0.1 * len(examples)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (s + 1) / warmup if s < warmup else max(0.0, (len(examples) - s) / (len(examples) - warmup)),
    )
    model.train()
    times, losses = [], []
    for rows in examples:
        started = time.perf_counter()
        columns = list(zip(*rows, strict=True))
        features = []
        for i, column in enumerate(columns):
            model.max_seq_length = lengths[i > 0]
            features.append(model.tokenize(list(column)))
        loss = loss_fn(features, None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        times.append(time.perf_counter() - started)
    return times, losses


def _train_hybrid(backend: Any, args: argparse.Namespace, pools: Path, arm: str) -> tuple[list[float], list[float]]:
    from hybrid.negatives import SamplerConfig
    from hybrid.training.config import TrainConfig
    from hybrid.training.memory import default_budget, machine_memory
    from hybrid.training.trainer import TrainProgress, train

    way: dict[str, Any] = {"grad_checkpointing": True} if arm == "hybrid-ckpt" else {}
    if arm == "hybrid-budget":
        way = {"max_memory": default_budget(machine_memory())}  # as `hybrid train` resolves it when none is given
    elif arm.startswith("hybrid-c") and arm[8:].isdigit():
        way = {"grad_cache_chunk": int(arm[8:])}
    elif arm not in ("hybrid", "hybrid-ckpt"):
        raise SystemExit(f"unknown arm {arm!r}")

    stamps: list[float] = []

    def progress(p: TrainProgress) -> None:
        if p.phase in ("plan", "training"):  # the plan comes just before the first step
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            index=args.index,
            queries=args.queries,
            pools=pools,
            out=Path(out),
            sampler=SamplerConfig(n=args.negatives),
            steps=args.steps,
            batch_size=args.batch,
            lr=LR,
            temperature=TEMPERATURE,
            query_max_length=args.query_len,
            passage_max_length=args.passage_len,
            save_every=0,
            log_every=1,
            refresh_at_end=False,
            **way,
        )
        result = train(config, backend, progress=progress)
    return [b - a for a, b in itertools.pairwise(stamps)], list(result.losses)


def _train_cli(args: argparse.Namespace, pools: Path, processes: int) -> tuple[float, list[float]]:
    """``hybrid train`` as a user runs it, with ``--nproc`` when ``processes`` > 1 (torchrun
    then gives each process one thread); examples/s over all its steps, from its log."""
    import json
    import subprocess

    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "hybrid.cli", "train", "-i", args.index, "--store", str(args.store)]
        command += ["--queries", str(args.queries), "--qrels", str(args.qrels), "--pools", str(pools)]
        command += ["--out", out, "--steps", str(args.steps), "--batch-size", str(args.batch)]
        command += ["--negatives", str(args.negatives), "--lr", str(LR), "--temperature", str(TEMPERATURE)]
        command += ["--query-max-length", str(args.query_len), "--passage-max-length", str(args.passage_len)]
        command += ["--save-every", "0", "--no-refresh-at-end", "-q"]
        if processes > 1:
            command += ["--nproc", str(processes)]
        subprocess.run(command, check=True)
        log = [json.loads(line) for line in (Path(out) / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "examples_per_s" in r]
    return float(steps[-1]["examples_per_s"]), [float(r["loss"]) for r in steps]


if __name__ == "__main__":
    raise SystemExit(main())
