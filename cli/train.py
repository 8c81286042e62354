"""``hybrid train``: fine-tune the dense encoder with SimANS (or comparison) negatives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .common import (
    BackendOptions,
    QuietOpt,
    backend_options,
    console,
    err_console,
    handle_errors,
)

Opt = typer.Option


@handle_errors
@backend_options
def train(
    config_file: Annotated[
        Path | None, Opt("--config", "-c", help="YAML/TOML/JSON file of training options; flags override it.")
    ] = None,
    index: Annotated[str | None, Opt("--index", "-i", help="Index to train against (mined, refreshed).")] = None,
    queries: Annotated[Path | None, Opt("--queries", help="Training queries.")] = None,
    qrels: Annotated[Path | None, Opt("--qrels", help="Training qrels (positives).")] = None,
    answers: Annotated[
        Path | None, Opt("--answers", help="DPR qa file: answer-bearing passages are positives / false negatives.")
    ] = None,
    pools: Annotated[Path | None, Opt("--pools", help="Mined pools to start from (default: mine at start).")] = None,
    out: Annotated[Path | None, Opt("--out", "-o", help="Run directory: checkpoints, log, pools.")] = None,
    model: Annotated[
        str | None, Opt("--model", "-m", help="Initial model directory (default: all-MiniLM-L6-v2).")
    ] = None,
    sampler: Annotated[str | None, Opt("--sampler", help="simans, random, topk, percpos or inbatch (simans).")] = None,
    negatives: Annotated[int | None, Opt("--negatives", help="Sampled negatives per query (15).")] = None,
    depth: Annotated[int | None, Opt("--pool-depth", help="Top-k of the pool sampled from (100).")] = None,
    a: Annotated[float | None, Opt("--a", help="SimANS a (kernel width) (0.5).")] = None,
    b: Annotated[float | None, Opt("--b", help="SimANS b; peak at s+ + b (reference NQ: b=-1) (0).")] = None,
    kernel: Annotated[str | None, Opt("--kernel", help="SimANS kernel: squared (paper) or absolute (squared).")] = None,
    scale: Annotated[
        float | None, Opt("--score-scale", help="Scores are multiplied by this before the kernel (1).")
    ] = None,
    percpos: Annotated[
        float | None, Opt("--percpos", help="percpos: drop candidates above this fraction of s+ (0.95).")
    ] = None,
    steps: Annotated[int | None, Opt("--steps", help="Optimizer steps (1000).")] = None,
    batch_size: Annotated[int | None, Opt("--batch-size", help="Queries per micro-batch (16).")] = None,
    grad_accum: Annotated[int | None, Opt("--grad-accum", help="Micro-batches per step (1).")] = None,
    lr: Annotated[float | None, Opt("--lr", help="Peak learning rate (2e-5).")] = None,
    warmup: Annotated[float | None, Opt("--warmup", help="Warmup fraction of steps (0.1).")] = None,
    temperature: Annotated[float | None, Opt("--temperature", help="Softmax temperature (0.05).")] = None,
    in_batch: Annotated[
        bool | None, Opt("--in-batch/--no-in-batch", help="Other queries' passages as negatives (on).")
    ] = None,
    shared: Annotated[
        bool | None, Opt("--shared/--separate", help="One tower, or separate query/passage towers (shared).")
    ] = None,
    passage_max_length: Annotated[int | None, Opt("--passage-max-length", help="(128)")] = None,
    query_max_length: Annotated[int | None, Opt("--query-max-length", help="(64)")] = None,
    grad_checkpointing: Annotated[
        bool | None, Opt("--grad-checkpointing/--no-grad-checkpointing", help="Trade compute for memory (off).")
    ] = None,
    precision: Annotated[
        str | None, Opt("--precision", help="auto (bf16/fp16 on CUDA, fp32 on CPU), fp32, bf16, fp16.")
    ] = None,
    seed: Annotated[int | None, Opt("--seed", help="(13)")] = None,
    save_every: Annotated[int | None, Opt("--save-every", help="Checkpoint every N steps (500).")] = None,
    refresh_every: Annotated[
        int | None, Opt("--refresh-every", help="Re-embed the index and re-mine every N steps (0: off) (0).")
    ] = None,
    refresh_at_end: Annotated[
        bool | None, Opt("--refresh-at-end/--no-refresh-at-end", help="Re-embed with the final model (on).")
    ] = None,
    dev_queries: Annotated[Path | None, Opt("--dev-queries", help="Dev queries evaluated at each refresh.")] = None,
    dev_qrels: Annotated[
        Path | None, Opt("--dev-qrels", help="Dev qrels; the best checkpoint is kept in OUT/best.")
    ] = None,
    device: Annotated[str | None, Opt("--device", help="cpu, cuda … (cuda when present).")] = None,
    resume: Annotated[bool, Opt("--resume", help="Continue from the newest checkpoint in --out.")] = False,
    conn: BackendOptions = BackendOptions(),
    quiet: QuietOpt = False,
) -> None:
    """Train the encoder: pools from BM25 + kNN, SimANS negatives, periodic re-embedding."""
    from hybrid.training.config import load_config_file, merge
    from hybrid.training.trainer import TrainProgress
    from hybrid.training.trainer import train as run_train

    overrides: dict[str, Any] = {
        "index": index,
        "queries": queries,
        "qrels": qrels,
        "answers": answers,
        "pools": pools,
        "out": out,
        "model": model,
        "steps": steps,
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "lr": lr,
        "warmup": warmup,
        "temperature": temperature,
        "in_batch": in_batch,
        "shared": shared,
        "passage_max_length": passage_max_length,
        "query_max_length": query_max_length,
        "grad_checkpointing": grad_checkpointing,
        "precision": precision,
        "seed": seed,
        "save_every": save_every,
        "refresh_every": refresh_every,
        "refresh_at_end": refresh_at_end,
        "dev_queries": dev_queries,
        "dev_qrels": dev_qrels,
        "device": device,
        "sampler_name": sampler,
        "sampler_n": negatives,
        "sampler_depth": depth,
        "sampler_a": a,
        "sampler_b": b,
        "sampler_kernel": kernel,
        "sampler_scale": scale,
        "sampler_percpos": percpos,
    }
    config = merge(load_config_file(config_file) if config_file else {}, overrides)
    backend = conn.open()
    try:
        if quiet:
            result = run_train(config, backend, resume=resume)
        else:
            columns = (
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]} · lr {task.fields[lr]} · {task.fields[rate]} ex/s"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            with Progress(*columns, console=err_console) as bar:
                task = bar.add_task("training", total=config.steps, loss="-", lr="-", rate="-")

                def show(p: TrainProgress) -> None:
                    bar.update(
                        task,
                        completed=p.step,
                        description="refreshing" if p.phase == "refresh" else "training",
                        loss=f"{p.loss:.4f}",
                        lr=f"{p.lr:.2e}",
                        rate=f"{p.examples_per_s:.1f}",
                    )

                result = run_train(config, backend, resume=resume, progress=show)
    finally:
        backend.close()
    console.print(f"final checkpoint: {result.final}", markup=False, highlight=False)
    if result.best:
        console.print(f"best on dev: {result.best}", markup=False, highlight=False)
    for entry in result.refreshes:
        console.print("refresh " + json.dumps(entry), markup=False, highlight=False)
    console.print(f"{result.examples_per_s:.2f} training examples/s, {result.seconds:.0f} s in all", markup=False)
