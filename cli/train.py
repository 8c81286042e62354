"""``hybrid train``: fine-tune the dense encoder with SimANS (or comparison) negatives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from hybrid.errors import ConfigError

from .common import (
    DEFAULT_GRACE_S,
    BackendOptions,
    GraceOpt,
    Params,
    QuietOpt,
    backend_options,
    console,
    err_console,
    handle_errors,
    option_group,
    progress_bar,
    say_grace,
)

if TYPE_CHECKING:
    from hybrid.backends.base import Backend
    from hybrid.training.config import TrainConfig
    from hybrid.training.distributed import Distributed
    from hybrid.training.trainer import TrainResult

Opt = typer.Option


def _size_option(value: str | None) -> str | None:
    """--max-memory checked as it is parsed: a size that is not one is a usage error."""
    from hybrid.training.memory import parse_size

    if value is not None:
        try:
            parse_size(value)
        except ConfigError as exc:
            raise typer.BadParameter(str(exc)) from None
    return value


# The options that become TrainConfig fields, named by field: declared once here, and each
# command-line value overrides the config file's.
_TRAINING: Params = [
    (
        "index",
        Annotated[str | None, Opt("--index", "-i", help="Index to train against (mined, refreshed).")],
        None,
    ),
    (
        "queries",
        Annotated[Path | None, Opt("--queries", help="Training queries.")],
        None,
    ),
    (
        "qrels",
        Annotated[Path | None, Opt("--qrels", help="Training qrels (positives).")],
        None,
    ),
    (
        "answers",
        Annotated[
            Path | None, Opt("--answers", help="DPR qa file: answer-bearing passages are positives / false negatives.")
        ],
        None,
    ),
    (
        "pools",
        Annotated[Path | None, Opt("--pools", help="Mined pools to start from (default: mine at start).")],
        None,
    ),
    (
        "out",
        Annotated[Path | None, Opt("--out", "-o", help="Run directory: checkpoints, log, pools.")],
        None,
    ),
    (
        "model",
        Annotated[
            str | None,
            Opt("--model", "-m", help="Initial model directory (default: the model that embedded the index)."),
        ],
        None,
    ),
    (
        "reembed",
        Annotated[
            bool | None, Opt("--reembed", help="Re-embed the index with --model first when another model made it.")
        ],
        None,
    ),
    (
        "remine",
        Annotated[
            bool | None, Opt("--remine", help="Mine fresh pools even when --pools is given (e.g. the index changed).")
        ],
        None,
    ),
    (
        "sampler_name",
        Annotated[str | None, Opt("--sampler", help="simans, random, topk, percpos or inbatch (simans).")],
        None,
    ),
    (
        "sampler_n",
        Annotated[int | None, Opt("--negatives", help="Sampled negatives per query (3).")],
        None,
    ),
    (
        "sampler_depth",
        Annotated[int | None, Opt("--pool-depth", help="Top-k of the pool sampled from (100).")],
        None,
    ),
    (
        "sampler_a",
        Annotated[float | None, Opt("--a", help="SimANS a, the kernel's sharpness (0.5, as the paper).")],
        None,
    ),
    (
        "sampler_b",
        Annotated[float | None, Opt("--b", help="SimANS b; peak at s+ + b (reference NQ: b=-1) (0).")],
        None,
    ),
    (
        "sampler_kernel",
        Annotated[str | None, Opt("--kernel", help="SimANS kernel: squared (paper) or absolute (squared).")],
        None,
    ),
    (
        "sampler_scale",
        Annotated[
            str | None,
            Opt(
                "--score-scale",
                help="Multiplies scores before the kernel: auto = 1/temperature for normalised models, else 1 (auto).",
            ),
        ],
        None,
    ),
    (
        "sampler_percpos",
        Annotated[float | None, Opt("--percpos", help="percpos: drop candidates above this fraction of s+ (0.95).")],
        None,
    ),
    (
        "steps",
        Annotated[int | None, Opt("--steps", help="Optimizer steps (default: from --epochs).")],
        None,
    ),
    (
        "epochs",
        Annotated[float | None, Opt("--epochs", help="Passes over the training queries, reshuffled each (2).")],
        None,
    ),
    (
        "batch_size",
        Annotated[int | None, Opt("--batch-size", help="Queries per micro-batch (32).")],
        None,
    ),
    (
        "grad_accum",
        Annotated[int | None, Opt("--grad-accum", help="Micro-batches per step (1).")],
        None,
    ),
    (
        "grad_cache_chunk",
        Annotated[
            int | None,
            Opt(
                "--grad-cache-chunk",
                help="GradCache: encode in chunks of this many texts, so the batch size is not bounded by memory "
                "(off).",
            ),
        ],
        None,
    ),
    (
        "lr",
        Annotated[float | None, Opt("--lr", help="Peak learning rate (1e-4).")],
        None,
    ),
    (
        "warmup",
        Annotated[float | None, Opt("--warmup", help="Warmup fraction of steps (0.1).")],
        None,
    ),
    (
        "temperature",
        Annotated[float | None, Opt("--temperature", help="Softmax temperature (0.05).")],
        None,
    ),
    (
        "in_batch",
        Annotated[bool | None, Opt("--in-batch/--no-in-batch", help="Other queries' passages as negatives (on).")],
        None,
    ),
    (
        "shared",
        Annotated[
            bool | None, Opt("--shared/--separate", help="One tower, or separate query/passage towers (shared).")
        ],
        None,
    ),
    (
        "passage_max_length",
        Annotated[
            int | None,
            Opt(
                "--passage-max-length", help="Training passage truncation; re-embedding uses the index's (the index's)."
            ),
        ],
        None,
    ),
    (
        "query_max_length",
        Annotated[int | None, Opt("--query-max-length", help="Training query truncation (the index's).")],
        None,
    ),
    (
        "positives",
        Annotated[
            str | None,
            Opt(
                "--positives",
                help="one: the sampled positive is the target; all: every labelled positive counts (one).",
            ),
        ],
        None,
    ),
    (
        "positives_per_query",
        Annotated[int | None, Opt("--positives-per-query", help="Labelled positives drawn per query each step (1).")],
        None,
    ),
    (
        "grades",
        Annotated[
            str | None,
            Opt(
                "--grades",
                help="ignore: every labelled positive alike; weight: graded qrels draw and count positives "
                "by grade (ignore).",
            ),
        ],
        None,
    ),
    (
        "sampler_anchor",
        Annotated[
            str | None,
            Opt(
                "--anchor", help="SimANS anchor with several positives: sampled, max or mean positive score (sampled)."
            ),
        ],
        None,
    ),
    (
        "distill",
        Annotated[
            float | None,
            Opt("--distill", help="Weight of KL to the base model's pool scores, against drift (0: off) (0)."),
        ],
        None,
    ),
    (
        "update",
        Annotated[
            str | None,
            Opt(
                "--update",
                help="both: train and re-embed; query: train the query side against the index's vectors, "
                "applied without re-embedding (both).",
            ),
        ],
        None,
    ),
    (
        "guard",
        Annotated[
            bool | None,
            Opt(
                "--guard/--no-guard",
                help="Replace the index's model only with one that beats it on a dev split (carved when not given) "
                "(on).",
            ),
        ],
        None,
    ),
    (
        "dev_share",
        Annotated[
            float | None, Opt("--dev-share", help="Share of training queries held out as the guard's dev set (0.1).")
        ],
        None,
    ),
    (
        "guard_depth",
        Annotated[
            int | None, Opt("--guard-depth", help="BM25 and dense top-k per dev query that the guard ranks (30).")
        ],
        None,
    ),
    (
        "guard_p",
        Annotated[float | None, Opt("--guard-p", help="Paired-test p-value a model must beat the base under (0.05).")],
        None,
    ),
    (
        "grad_checkpointing",
        Annotated[
            bool | None,
            Opt(
                "--grad-checkpointing/--no-grad-checkpointing",
                help="Recompute activations in backward: less memory, ~1.6x slower steps (off).",
            ),
        ],
        None,
    ),
    (
        "precision",
        Annotated[str | None, Opt("--precision", help="auto (bf16/fp16 on CUDA, fp32 on CPU), fp32, bf16, fp16.")],
        None,
    ),
    (
        "seed",
        Annotated[int | None, Opt("--seed", help="(13)")],
        None,
    ),
    (
        "save_every",
        Annotated[int | None, Opt("--save-every", help="Checkpoint every N steps (500).")],
        None,
    ),
    (
        "refresh_every",
        Annotated[
            int | None, Opt("--refresh-every", help="Re-embed the index and re-mine every N steps (0: off) (0).")
        ],
        None,
    ),
    (
        "refresh_at_end",
        Annotated[bool | None, Opt("--refresh-at-end/--no-refresh-at-end", help="Re-embed with the final model (on).")],
        None,
    ),
    (
        "dev_queries",
        Annotated[Path | None, Opt("--dev-queries", help="The guard's dev queries (default: carved from --queries).")],
        None,
    ),
    (
        "dev_qrels",
        Annotated[Path | None, Opt("--dev-qrels", help="Dev qrels; the best checkpoint is kept in OUT/best.")],
        None,
    ),
    (
        "device",
        Annotated[str | None, Opt("--device", help="cpu, cuda … (cuda when present).")],
        None,
    ),
    (
        "max_memory",
        Annotated[
            str | None,
            Opt(
                "--max-memory",
                callback=_size_option,
                help="Memory a training step may take, e.g. 6GiB or 800MiB; the GradCache chunk (on a CPU at most "
                "16 texts) and gradient checkpointing, if needed, are chosen to fit it (40% of RAM or of free GPU "
                "memory, at most 8GiB).",
            ),
        ],
        None,
    ),
]


ConfigFileOpt = Annotated[
    Path | None, Opt("--config", "-c", help="YAML/TOML/JSON file of training options; flags override it.")
]
ResumeOpt = Annotated[bool, Opt("--resume", help="Continue from the newest checkpoint in --out.")]
NprocOpt = Annotated[
    int, Opt("--nproc", help="Processes (GPUs) to train with: relaunches under torchrun (1: this process).")
]
AllowChangeOpt = Annotated[
    bool, Opt("--allow-config-change", help="With --resume: go on with options that differ from the run's.")
]
DryRunOpt = Annotated[
    bool,
    Opt(
        "--dry-run",
        help="Print the plan (steps, batch, chunk, memory, time from 1-2 timed steps) without training; "
        "changes no index, writes no checkpoint (keeps mined pools in OUT/dry-run/pools).",
    ),
]


@handle_errors
@backend_options
@option_group(_TRAINING, "overrides", dict)
def train(
    config_file: ConfigFileOpt = None,
    overrides: dict[str, Any] | None = None,
    resume: ResumeOpt = False,
    grace: GraceOpt = DEFAULT_GRACE_S,
    nproc: NprocOpt = 1,
    allow_config_change: AllowChangeOpt = False,
    dry_run: DryRunOpt = False,
    conn: BackendOptions = BackendOptions(),
    quiet: QuietOpt = False,
) -> None:
    """Train the encoder: pools from BM25 + kNN, SimANS negatives, periodic re-embedding."""
    from hybrid.training.config import load_config_file, merge

    if nproc > 1:
        raise typer.Exit(_relaunch(nproc))
    config = merge(load_config_file(config_file) if config_file else {}, overrides or {})
    dist = _distributed()
    quiet = quiet or not dist.main
    config = _with_budget(config, dist)
    if dry_run:
        _dry_run(config, conn, resume, dist)
        return
    backend = conn.open()
    backend.retirement.grace_s = grace
    try:
        result = _run(config, backend, resume, allow_config_change, dist, quiet)
    finally:
        if backend.retirement.pending:
            say_grace(grace)
        backend.close()
        dist.stop()
    if dist.main:
        _summary(result, quiet)


def _run(
    config: TrainConfig, backend: Backend, resume: bool, allow_change: bool, dist: Distributed, quiet: bool
) -> TrainResult:
    """Train, drawing a progress bar (the plan and the time estimate above it) unless ``quiet``."""
    from hybrid.training.trainer import TrainProgress
    from hybrid.training.trainer import train as run_train

    if quiet:
        return run_train(config, backend, resume=resume, allow_config_change=allow_change, dist=dist)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]} · lr {task.fields[lr]} · {task.fields[rate]} ex/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with progress_bar(*columns) as bar:
        task = bar.add_task("training", total=config.steps, loss="-", lr="-", rate="-")  # None until planned

        def show(p: TrainProgress) -> None:
            if p.plan is not None:
                bar.console.print(describe_plan(p.plan), markup=False, highlight=False)
            if p.estimate is not None:
                bar.console.print(describe_estimate(p.estimate), markup=False, highlight=False, soft_wrap=True)
            bar.update(
                task,
                total=p.steps,
                completed=p.step,
                description="refreshing" if p.phase == "refresh" else "training",
                loss=f"{p.loss:.4f}",
                lr=f"{p.lr:.2e}",
                rate=f"{p.examples_per_s:.1f}",
            )

        return run_train(config, backend, resume=resume, progress=show, allow_config_change=allow_change, dist=dist)


def _summary(result: TrainResult, quiet: bool) -> None:
    """What the run did: the plan (when no bar showed it), dev figures, the guard's choice, refreshes, time."""
    if quiet and result.plan:
        console.print(describe_plan(result.plan), markup=False, highlight=False)
    for dev in result.dev:
        console.print(f"dev nDCG@10 at step {dev['step']}: {dev['ndcg@10']:.4f}", markup=False, highlight=False)
    console.print(f"final checkpoint: {result.final}", markup=False, highlight=False)
    for note in result.notes:
        console.print(f"note: {note}", markup=False, highlight=False)
    if result.guard is not None:
        console.print(result.guard.line(), markup=False, highlight=False)
    if result.best:
        console.print(f"best on dev: {result.best}", markup=False, highlight=False)
    for entry in result.refreshes:
        kind = "query version" if "query_version" in entry else "refresh"
        console.print(f"{kind} " + json.dumps(entry), markup=False, highlight=False)
    console.print(f"{result.examples_per_s:.2f} training examples/s, {result.seconds:.0f} s in all", markup=False)
    if result.estimate is not None:
        console.print(
            describe_outcome(result.estimate, result.train_seconds), markup=False, highlight=False, soft_wrap=True
        )


def describe_plan(plan: dict[str, Any]) -> str:
    """One line: queries, steps, epochs and the sampler's effective candidates; a second
    with the memory plan, and a third with the probe's time when a dry run timed steps."""
    eff = plan["effective_candidates"]
    held = plan.get("queries_held_out", 0)  # given pools may hold the guard's dev queries
    held_text = f", {held} held out for the guard's dev set" if held else ""
    text = (
        f"{plan['queries']} training queries ({plan['queries_without_positive']} without a positive skipped"
        f"{held_text}), "
        f"{plan['steps']} steps = {plan['epochs']} epochs; the sampler draws from {eff['effective_median']:g} "
        f"effective candidates per query (p10 {eff['effective_p10']:g}, p90 {eff['effective_p90']:g}) "
        f"of {eff['pool_median']:g}"
    )
    if plan.get("memory"):
        from hybrid.training.memory import MemoryPlan

        text += "\n" + MemoryPlan(**plan["memory"]).line()
    probe = plan.get("probe")
    if probe:
        text += (
            f"\ntime: {duration(probe['training_s'])} for {plan['steps']} steps of {plan['examples_per_step']} "
            f"queries at {probe['examples_per_s']:g} queries/s (the last of {probe['steps_timed']} timed steps took "
            f"{probe['step_s'][-1]:g} s); refreshes and the guard's dev scoring come on top"
        )
    return text


def describe_estimate(estimate: dict[str, Any]) -> str:
    """The time estimate made at the first log step, as one line."""
    return (
        f"after {estimate['step']} steps: {estimate['examples_per_s']:g} examples/s, {estimate['step_s']:g} s a step; "
        f"about {duration(estimate['eta_s'])} of training steps left (refreshes and the guard come on top)"
    )


def describe_outcome(estimate: dict[str, Any], train_seconds: float) -> str:
    """The estimate beside what the steps after it took."""
    took = max(0.0, train_seconds - estimate["train_s"])
    return (
        f"time: at step {estimate['step']} the steps left were estimated at {duration(estimate['eta_s'])}; "
        f"they took {duration(took)}"
    )


def duration(seconds: float) -> str:
    """``2 h 05 min``, ``4 min 10 s``, ``12 s``."""
    whole = round(seconds)
    if whole >= 3600:
        return f"{whole // 3600} h {whole % 3600 // 60:02d} min"
    if whole >= 60:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{seconds:.1f} s" if seconds < 10 else f"{whole} s"


def _with_budget(config: TrainConfig, dist: Distributed) -> TrainConfig:
    """The config with ``max_memory`` resolved against this machine: a share of it when
    none is given, the machine's own when more is asked (with a warning)."""
    from hybrid.training.memory import machine_budget, machine_memory

    budget, warning = machine_budget(config.max_memory, machine_memory(dist.device(config.device)))
    if warning and dist.main:
        err_console.print(f"Warning: {warning}", markup=False, highlight=False, soft_wrap=True)
    return replace(config, max_memory=budget)


def _dry_run(config: TrainConfig, conn: BackendOptions, resume: bool, dist: Distributed) -> None:
    """Plan and time the run; print the plan and what the dry run left behind."""
    from hybrid.training.dryrun import dry_run

    if resume or dist.enabled:
        raise ConfigError("--dry-run plans a new run in one process; leave out --resume and --nproc")
    backend = conn.open()
    try:
        plan = dry_run(config, backend)
    finally:
        backend.close()
    console.print(describe_plan(plan), markup=False, highlight=False, soft_wrap=True)
    kept = plan["pools_kept"]
    left = f"; pools mined for it are kept: pass --pools {kept} to reuse them" if kept else ""
    console.print(f"dry run: nothing trained, the index and checkpoints untouched{left}", markup=False, soft_wrap=True)


def _distributed() -> Distributed:
    """This process's rank from torchrun's environment (one process when not under torchrun)."""
    from hybrid.training.distributed import Distributed

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    return Distributed(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def _relaunch(nproc: int) -> int:
    """Run this same command under torchrun with ``nproc`` processes; returns its exit status."""
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    # Each process gets its share of the cores (torchrun would give each one thread, and say
    # so in a banner); a value the user set is kept.
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // nproc)))
    return subprocess.call([*command, "-m", "hybrid.cli", *args], env=env)
