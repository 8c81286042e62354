"""The training loop: contrastive loss over sampled negatives, checkpoints, refresh.

The index decides how vectors are made: training starts from the index's own model (or
one re-embedded into it with ``reembed``), truncates for training batches only, saves
checkpoints with the index's settings, and every refresh re-embeds with those settings.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hybrid.backends.base import Backend
from hybrid.encoder import cpu_threads
from hybrid.errors import ConfigError
from hybrid.training.checkpoint import (
    checkpoint_dir,
    latest_checkpoint,
    load_state,
    prune,
    save_checkpoint,
    update_state,
)
from hybrid.training.config import TrainConfig
from hybrid.training.data import Example, PoolData, pool_table
from hybrid.training.distributed import Distributed
from hybrid.training.gradcache import cached_backward
from hybrid.training.guard import Guard, dev_split
from hybrid.training.memory import Batch, MemoryPlan, ModelShape, enable_checkpointing, plan_memory
from hybrid.training.model import DualEncoder, contrastive_loss, distill_loss, false_negative_mask
from hybrid.training.query_side import PassageVectors, write_note
from hybrid.training.refresh import encode_share
from hybrid.training.selection import CANDIDATES_DIR, Decision
from hybrid.training.setup import (
    MODELS,
    RunState,
    check_config,
    keep_model,
    prepare_model,
    prepare_pools,
    prune_models,
    start_run,
)
from hybrid.training.setup import log as write_log

log = logging.getLogger(__name__)


@dataclass
class TrainProgress:
    step: int
    steps: int
    loss: float
    lr: float
    examples_per_s: float
    phase: str = "training"  # training | refresh | plan (before the first step, with ``plan``)
    plan: dict[str, Any] | None = None
    estimate: dict[str, Any] | None = None  # once, at the first log step: the time the steps left will take


@dataclass
class TrainResult:
    final: Path
    steps: int
    losses: list[float] = field(default_factory=list)
    refreshes: list[dict[str, Any]] = field(default_factory=list)
    best: Path | None = None
    seconds: float = 0.0
    examples_per_s: float = 0.0
    dev: list[dict[str, Any]] = field(default_factory=list)  # dense dev nDCG@10 per step (step 0 first)
    plan: dict[str, Any] = field(default_factory=dict)
    guard: Decision | None = None  # what the guard chose (None: no guard ran)
    notes: list[str] = field(default_factory=list)  # what the run's summary must say (e.g. the guard fell back)
    estimate: dict[str, Any] | None = None  # the time estimate made at the first log step (see TrainProgress)
    train_seconds: float = 0.0  # in training steps (refreshes, mining and the guard excluded)


def train(
    config: TrainConfig,
    backend: Backend,
    resume: bool = False,
    progress: Callable[[TrainProgress], None] | None = None,
    allow_config_change: bool = False,
    dist: Distributed | None = None,
) -> TrainResult:
    """Train per ``config``; with ``resume`` continue from the newest checkpoint in ``out``.

    With ``dist`` (several processes, see :mod:`hybrid.training.distributed`) each rank
    embeds its share of every global batch; rank 0 alone mines, refreshes and writes.

    Raises:
        ConfigError: checkpoints exist without ``resume`` (or none with it); resumed with
            changed options unless ``allow_config_change``; pools from another index version.
        ModelMismatchError: ``config.model`` did not make the index's vectors (see ``reembed``).
    """
    started = time.perf_counter()
    dist = dist or Distributed()
    out = config.out
    device = dist.device(config.device)
    dist.start(device)
    torch.set_num_threads(cpu_threads())  # this process's share; encoders built in training keep it
    if dist.enabled and config.update == "query":
        raise ConfigError("--update query trains in one process (its steps embed queries only)")
    if dist.enabled and config.grad_cache_chunk:
        raise ConfigError("--grad-cache-chunk works in one process; with several, each holds only its share")
    if dist.world > config.batch_size:
        raise ConfigError(
            f"--batch-size {config.batch_size} is smaller than the {dist.world} processes; each needs a query"
        )
    previous = latest_checkpoint(out) if out.exists() else None
    guard: Guard | None = None
    notes: list[str] = []
    if dist.main:
        if previous is not None and not resume:
            raise ConfigError(f"{out} already has checkpoints; pass --resume to continue, or choose another --out")
        if resume and previous is None:
            raise ConfigError(f"nothing to resume in {out}: no checkpoint found")
        out.mkdir(parents=True, exist_ok=True)
        check_config(out, config, resume, allow_config_change)
        shutil.rmtree(out / "refresh", ignore_errors=True)  # shares of a refresh a crash cut short
        with dist.alone():
            run = start_run(config, backend, previous, device)
            state = load_state(previous) if previous is not None else {}
            if not state:
                run.split, note = dev_split(config)
                if note:
                    log.warning(note)
                    notes.append(note)
            prepare_pools(config, backend, run, state, device)
            guard = _start_guard(config, backend, run, state)
            if previous is not None and state.get("refresh_pending"):
                update_state(previous, {**run.state(), "refresh_pending": False})  # redone: never again
            pool_table(run.pools)  # built once, here: the other ranks map rank 0's table
    run = dist.share(run if dist.main else None)  # the other ranks take rank 0's run as it is
    if not dist.main:
        state = load_state(previous) if previous is not None else {}
    model = prepare_model(config, run, device)
    optimizer = _optimizer(model, config)
    guarded = dist.share(guard is not None if dist.main else None)
    data = _pool_data(run, config)
    steps = config.total_steps(len(data))
    if state.get("steps") and config.steps is None and state.get("epochs") == config.epochs:
        steps = int(state["steps"])  # the schedule stays fixed even if a refresh changed the query count
    scheduler = _scheduler(optimizer, config.warmup, steps)
    autocast = _autocast(config, device)
    scaler = torch.amp.GradScaler("cuda") if autocast == torch.float16 else None
    step = int(state.get("step", 0))
    if state:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    result = TrainResult(
        final=previous or out, steps=steps, refreshes=run.refreshes, best=run.best, dev=run.dev, notes=notes
    )
    memory = memory_plan(config, model, dist, device)
    result.plan = {**run.plan(config, data, steps), "processes": dist.world, "memory": memory.to_dict()}
    if progress is not None and dist.main:
        progress(TrainProgress(step, steps, float("nan"), 0.0, 0.0, "plan", result.plan))
    if not state and dist.main:
        write_log(out, {"plan": result.plan})
        with dist.alone():
            run.evaluate_dev(config, backend, 0, None)
    run = dist.share(run if dist.main else None)
    examples, train_seconds, first_step = 0, 0.0, step
    passages = PassageVectors(backend, config.index, run.recipe.dims) if config.update == "query" else None
    model.train()
    while step < steps:
        step_start = time.perf_counter()
        loss_value = 0.0
        for micro in range(config.grad_accum):
            torch.manual_seed(config.seed * 1_000_003 + step * config.grad_accum + micro)  # dropout per step
            batch = data.batch(step * config.grad_accum + micro, config.batch_size)
            inputs = _batch_inputs(batch, backend, config, device)
            loss = micro_step(model, inputs, config, device, autocast, scaler, dist, memory.chunk, passages)
            loss_value += float(loss.detach())
            examples += len(batch)
        optimizer_step(model, optimizer, scheduler, scaler, config, dist)
        step += 1
        result.losses.append(loss_value)
        train_seconds += time.perf_counter() - step_start
        rate = examples / max(train_seconds, 1e-9)  # training only, refreshes excluded
        lr = scheduler.get_last_lr()[0]
        estimate = None
        if dist.main and (step % config.log_every == 0 or step == steps):
            elapsed = round(time.perf_counter() - started, 1)
            record = {"step": step, "loss": round(loss_value, 6), "lr": lr, "examples_per_s": round(rate, 2)}
            if result.estimate is None and step < steps:
                estimate = result.estimate = time_estimate(step, steps, train_seconds, rate, first_step)
                record["eta_s"] = estimate["eta_s"]
                log.info("step %d: %.2f examples/s; the steps left take about %.0f s", step, rate, estimate["eta_s"])
            write_log(out, {**record, "elapsed_s": elapsed})
        if progress is not None and dist.main:
            progress(TrainProgress(step, steps, loss_value, lr, rate, estimate=estimate))
        refresh_now = bool(config.refresh_every and step % config.refresh_every == 0 and step < steps)
        refresh_now = refresh_now or (step == steps and config.refresh_at_end and not guarded)
        if not (refresh_now or step == steps or (config.save_every and step % config.save_every == 0)):
            continue

        def save(pending: bool, step: int = step, run: RunState = run) -> Path:
            extra = {
                **run.state(),
                "steps": steps,
                "epochs": config.epochs,
                "refresh_pending": pending,
                "scaler": scaler.state_dict() if scaler else None,
                "guard": guard.state() if guard else None,
            }
            path = checkpoint_dir(out, step)
            saved = save_checkpoint(path, model, config, optimizer, scheduler, step, extra, run.recipe.settings())
            if config.update == "query":
                write_note(saved, run.recipe)
            return saved

        path = checkpoint_dir(out, step)
        if dist.main:
            # Saved before the refresh with the refresh marked pending: a crash during it redoes it on resume.
            path = save(pending=refresh_now)
            if guard is not None:
                with dist.alone():  # scored as saved: the guard may choose any checkpoint
                    allowed = guard.allows_refresh(path, step, device)
                if refresh_now and not allowed:
                    log.warning("step %d: worse than the base on dev; the index is not refreshed with it", step)
                    notes.append(f"step {step}: worse than the base on dev, not refreshed into the index")
                refresh_now = refresh_now and allowed
        if guarded:
            refresh_now = dist.share(refresh_now if dist.main else None)
        if dist.main and refresh_now and progress is not None:
            progress(TrainProgress(step, steps, loss_value, lr, rate, "refresh"))
        shares = _encode_shares(config, backend, run, path, step, dist, device) if refresh_now else []
        if dist.main:
            if refresh_now:
                with dist.alone():
                    if config.update == "query":
                        run.apply_query(config, backend, path, step)
                    else:
                        run.refresh(config, backend, path, step, last=step >= steps, device=device, shares=shares)
                    if step < steps:
                        pool_table(run.pools)
                update_state(path, {**run.state(), "refresh_pending": False})
            protect = ({run.best} if run.best else set()) | (guard.protected() if guard else set())
            prune(out, config.keep_checkpoints, protect)
            prune_models(out, run.recipe)
        run = dist.share(run if dist.main else None)  # the others wait for the checkpoint and refresh
        if refresh_now:
            model.train()
            if step < steps:
                data = _pool_data(run, config)
        result.final = path
    if guarded:
        if dist.main and guard is not None:
            with dist.alone():
                result.guard = _finish_guard(config, backend, run, guard, result.final, steps, device, progress)
        run = dist.share(run if dist.main else None)
    result.best = run.best
    result.seconds = time.perf_counter() - started
    result.examples_per_s = examples / max(train_seconds, 1e-9)
    result.train_seconds = train_seconds
    return result


def memory_plan(config: TrainConfig, model: DualEncoder, dist: Distributed, device: torch.device) -> MemoryPlan:
    """How each step fits ``config.max_memory`` (see :mod:`hybrid.training.memory`); turns
    gradient checkpointing on when the plan needs it.

    Raises:
        ConfigError: the budget is too small for one text per chunk.
    """
    towers = model.towers()
    shape = ModelShape.of(towers[0], sum(p.numel() for p in model.parameters() if p.requires_grad))
    queries = math.ceil(config.batch_size / dist.world)  # with several processes, this one's share
    per_query = config.positives_per_query + (0 if config.sampler.name == "inbatch" else config.sampler.n)
    if config.update == "query":  # the passages are stored vectors: only queries run through the model
        per_query, length = 0, model.settings.query_max_length
    else:
        length = max(model.settings.query_max_length, model.settings.passage_max_length)
    batch = Batch(queries=queries, passages=queries * per_query, length=length)
    chunk, ckpt = config.grad_cache_chunk, config.grad_checkpointing
    chunking = not dist.enabled and config.update != "query"  # GradCache embeds both sides
    plan = plan_memory(shape, batch, config.max_memory, device.type, chunk, ckpt, chunking=chunking)
    if plan.checkpointing and not config.grad_checkpointing:
        enable_checkpointing(towers)
    return plan


def micro_step(
    model: DualEncoder,
    inputs: _Inputs,
    config: TrainConfig,
    device: torch.device,
    autocast: torch.dtype | None,
    scaler: Any,
    dist: Distributed,
    chunk: int | None,
    passages: PassageVectors | None = None,
) -> torch.Tensor:
    """Forward and backward of one micro-batch (whole, in GradCache chunks, this rank's
    share, or its queries alone against the index's stored ``passages``); returns its loss,
    detached."""

    def amp() -> Any:
        return torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None)

    def loss_of(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return inputs.loss(q, p, config) / config.grad_accum

    if passages is not None:  # query side only: the passages are the index's stored vectors
        with amp():
            q = model.embed(inputs.queries, query=True, device=device)  # (B, d)
            loss = loss_of(q, torch.from_numpy(passages.get(inputs.ids)).to(device))  # (P, d): no gradient
        (scaler.scale(loss) if scaler else loss).backward()
        return loss.detach()
    if chunk and not dist.enabled:
        return cached_backward(
            lambda texts, is_query: model.embed(texts, query=is_query, device=device),
            inputs.queries,
            inputs.passages,
            loss_of,
            chunk,
            device,
            amp,
            scaler.scale if scaler else (lambda value: value),
        )
    with amp():
        if dist.enabled:
            loss = loss_of(*_embed_share(model, inputs, dist, device))
        else:
            q = model.embed(inputs.queries, query=True, device=device)  # (B, d)
            p = model.embed(inputs.passages, query=False, device=device)  # (P, d)
            loss = loss_of(q, p)
    (scaler.scale(loss) if scaler else loss).backward()
    return loss.detach()


def optimizer_step(
    model: DualEncoder,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    config: TrainConfig,
    dist: Distributed,
) -> None:
    """Gradients summed across processes, clipped, applied; the schedule advanced."""
    dist.sum_gradients([p for p in model.parameters() if p.requires_grad])
    if scaler:
        scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def time_estimate(step: int, steps: int, seconds: float, rate: float, first: int = 0) -> dict[str, Any]:
    """The time the steps after ``step`` will take at the pace of the ``step - first`` steps
    this process took ``seconds`` for (training steps only: refreshes and the guard add to it)."""
    per_step = seconds / max(1, step - first)
    eta = per_step * (steps - step)
    return {
        "step": step,
        "examples_per_s": round(rate, 2),
        "step_s": round(per_step, 2),
        "eta_s": round(eta, 1),
        "train_s": round(seconds, 1),
    }


def _pool_data(run: RunState, config: TrainConfig) -> PoolData:
    exclude = run.split.exclude if run.split else frozenset()
    return PoolData(run.pools, run.sampler, config.seed, exclude, config.positives_per_query)


def _start_guard(config: TrainConfig, backend: Backend, run: RunState, state: dict[str, Any]) -> Guard | None:
    """The guard of a new run (set up from the index as it is), or the one a checkpoint saved."""
    if state.get("guard"):
        return Guard.restore(config, backend, state["guard"])
    if state or not config.guard or run.split is None:
        return None
    return Guard.start(config, backend, run.split, run.recipe)


def _finish_guard(
    config: TrainConfig,
    backend: Backend,
    run: RunState,
    guard: Guard,
    final: Path,
    steps: int,
    device: torch.device,
    progress: Callable[[TrainProgress], None] | None,
) -> Decision:
    """The guard's choice at the end of the run; the index is re-embedded with it only
    when it wins (and the run refreshes at its end)."""
    if guard.decision is not None:  # a finished run resumed
        return guard.decision
    decision = guard.choose(config, final, steps, device)
    write_log(config.out, {"guard": {k: v for k, v in decision.__dict__.items()}})
    if decision.replace and decision.chosen and config.refresh_at_end:
        if progress is not None:
            progress(TrainProgress(steps, steps, float("nan"), 0.0, 0.0, "refresh"))
        if config.update == "query":
            run.apply_query(config, backend, Path(decision.chosen), steps)
        else:
            run.refresh(config, backend, Path(decision.chosen), steps, last=True, device=device)
    update_state(final, {**run.state(), "guard": guard.state()})
    shutil.rmtree(config.out / CANDIDATES_DIR, ignore_errors=True)  # the chosen one was kept under OUT/models
    return decision


def _encode_shares(
    config: TrainConfig,
    backend: Backend,
    run: RunState,
    checkpoint: Path,
    step: int,
    dist: Distributed,
    device: torch.device,
) -> list[Path]:
    """With several processes, each embeds its share of the corpus for rank 0's refresh.

    Rank 0 first keeps the checkpoint's model where every rank reads it; each rank writes
    its rows to OUT/refresh/step-N/rank-R; rank 0 then writes them all as the new version
    (checked row by row against the index) and swaps. One process: rank 0 encodes alone.
    """
    if not dist.enabled:
        return []
    count = None
    if dist.main:
        keep_model(checkpoint, config.out / MODELS / checkpoint.name)
        info = backend.info(config.index)
        # An index adopted in place may gain or lose documents between the ranks' reads:
        # rank 0 embeds it alone, as a single process does.
        count = None if info.extra.get("in_place") else backend.count(config.index)
    count = dist.share(count)  # also the barrier: rank 0 has kept the model
    if count is None:
        return []
    encoder = run.refresh_encoder(config, checkpoint, device)
    work = config.out / "refresh" / f"step-{step:07d}"
    folders = [work / f"rank-{r}" for r in range(dist.world)]
    encode_share(backend, config.index, encoder, dist.part(count), folders[dist.rank])
    del encoder
    dist.barrier()
    return folders


def _embed_share(
    model: DualEncoder, inputs: _Inputs, dist: Distributed, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's queries and their passages embedded, gathered with every other rank's."""
    start, end = dist.part(len(inputs.queries))
    first = [*inputs.positives.tolist(), len(inputs.passages)]  # each query's passages are contiguous
    q = model.embed(inputs.queries[start:end], query=True, device=device)
    p = model.embed(inputs.passages[first[start] : first[end]], query=False, device=device)
    return dist.gather(q), dist.gather(p)


@dataclass
class _Inputs:
    """One micro-batch's texts and the loss's bookkeeping."""

    queries: list[str]
    passages: list[str]
    ids: list[str]  # the passages' document ids, in column order
    positives: torch.Tensor  # (B,) query i's positive column
    groups: torch.Tensor  # (P,) the query each passage belongs to
    mask: torch.Tensor  # (B, P) labelled positives of query i that are not its target
    targets: torch.Tensor  # (B, P) query i's labelled positives (the numerator of the multi-positive loss)
    teacher: torch.Tensor  # (P,) the mining model's score of each passage for its own query

    def loss(self, q: torch.Tensor, p: torch.Tensor, config: TrainConfig) -> torch.Tensor:
        targets = self.targets if config.positives == "all" else None
        loss = contrastive_loss(
            q, p, self.positives, self.groups, config.temperature, config.in_batch, self.mask, targets
        )
        if config.distill > 0:
            loss = loss + config.distill * distill_loss(q, p, self.groups, self.teacher, config.temperature)
        return loss


def _batch_inputs(batch: list[Example], backend: Backend, config: TrainConfig, device: torch.device) -> _Inputs:
    ids = [doc for ex in batch for doc in (ex.positive, *ex.extra_positives, *ex.negatives)]
    docs = backend.get(config.index, sorted(set(ids)))
    missing = [d for d in ids if d not in docs]
    if missing:
        raise ConfigError(
            f"{len(missing)} pool documents are not in index '{config.index}' (e.g. {missing[0]}); "
            "mine the pools again against this index (--remine)"
        )
    texts: list[str] = []
    positives: list[int] = []
    groups: list[int] = []
    for i, ex in enumerate(batch):
        positives.append(len(texts))
        for doc_id in (ex.positive, *ex.extra_positives, *ex.negatives):
            doc = docs[doc_id]
            texts.append(f"{doc.title} {doc.text}" if doc.title else doc.text)
            groups.append(i)
    mask = false_negative_mask([ex.not_negative for ex in batch], [ex.positive for ex in batch], ids)
    targets = false_negative_mask([ex.labelled for ex in batch], [ex.positive for ex in batch], ids)
    teacher = [score for ex in batch for score in ex.teacher] if all(ex.teacher for ex in batch) else [0.0] * len(ids)
    return _Inputs(
        queries=[ex.query for ex in batch],
        passages=texts,
        ids=ids,
        positives=torch.tensor(positives, device=device),
        groups=torch.tensor(groups, device=device),
        mask=mask.to(device),
        targets=targets.to(device),
        teacher=torch.tensor(teacher, dtype=torch.float32, device=device),
    )


def _optimizer(model: DualEncoder, config: TrainConfig) -> torch.optim.Optimizer:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "LayerNorm" in name or name.endswith("bias") else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr)


def _scheduler(optimizer: torch.optim.Optimizer, warmup_fraction: float, steps: int) -> Any:
    warmup = math.ceil(warmup_fraction * steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (steps - step) / max(1, steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _autocast(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    if config.precision == "fp32" or (config.precision == "auto" and device.type != "cuda"):
        return None
    if config.precision == "fp16" or (device.type == "cuda" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


__all__ = ["TrainProgress", "TrainResult", "train"]
