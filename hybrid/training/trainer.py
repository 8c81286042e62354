"""The training loop: contrastive loss over sampled negatives, checkpoints, refresh."""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from hybrid.backends.base import Backend
from hybrid.encoder import load_settings, resolve_model
from hybrid.errors import ConfigError
from hybrid.mining import MineJob, run_mine
from hybrid.training.checkpoint import checkpoint_dir, latest_checkpoint, load_state, prune, save_checkpoint
from hybrid.training.config import TrainConfig
from hybrid.training.data import Example, PoolData
from hybrid.training.model import DualEncoder, contrastive_loss
from hybrid.training.refresh import refresh

log = logging.getLogger(__name__)
LOG_FILE = "train_log.jsonl"


@dataclass
class TrainProgress:
    step: int
    steps: int
    loss: float
    lr: float
    examples_per_s: float
    phase: str = "training"


@dataclass
class TrainResult:
    final: Path
    steps: int
    losses: list[float] = field(default_factory=list)
    refreshes: list[dict[str, Any]] = field(default_factory=list)
    best: Path | None = None
    seconds: float = 0.0
    examples_per_s: float = 0.0


def train(
    config: TrainConfig, backend: Backend, resume: bool = False, progress: Callable[[TrainProgress], None] | None = None
) -> TrainResult:
    """Train per ``config``; with ``resume`` continue from the newest checkpoint in ``out``."""
    started = time.perf_counter()
    out = config.out
    previous = latest_checkpoint(out) if out.exists() else None
    if previous is not None and not resume:
        raise ConfigError(f"{out} already has checkpoints; pass --resume to continue, or choose another --out")
    if resume and previous is None:
        raise ConfigError(f"nothing to resume in {out}: no checkpoint found")
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    source = previous if previous is not None else resolve_model(config.model)[0]
    settings = replace(
        load_settings(source), query_max_length=config.query_max_length, passage_max_length=config.passage_max_length
    )
    model = DualEncoder(source, settings, shared=config.shared).to(device)
    if config.grad_checkpointing:
        for tower in model.towers():
            tower.gradient_checkpointing_enable()
    optimizer = _optimizer(model, config)
    scheduler = _scheduler(optimizer, config)
    step, pools, best = 0, config.pools, None
    refreshes: list[dict[str, Any]] = []
    if previous is not None:
        state = load_state(previous)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, pools = int(state["step"]), Path(state["pools"])
        best, refreshes = (Path(state["best"]) if state.get("best") else None), state.get("refreshes", [])
    (out / "train_config.json").write_text(json.dumps(config.to_dict(), indent=1) + "\n")
    if pools is None:
        pools = _mine(config, backend, out / "pools" / "pools-0000000.jsonl.gz")
    data = PoolData(pools, config.sampler, config.seed)
    autocast = _autocast(config, device)
    scaler = torch.amp.GradScaler("cuda") if autocast == torch.float16 else None
    result = TrainResult(final=out, steps=config.steps, refreshes=refreshes, best=best)
    examples, train_seconds = 0, 0.0
    model.train()
    while step < config.steps:
        step_start = time.perf_counter()
        loss_value = 0.0
        for micro in range(config.grad_accum):
            torch.manual_seed(config.seed * 1_000_003 + step * config.grad_accum + micro)  # dropout per step
            batch = data.batch(step * config.grad_accum + micro, config.batch_size)
            with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
                loss = _batch_loss(model, batch, backend, config, device) / config.grad_accum
            (scaler.scale(loss) if scaler else loss).backward()
            loss_value += float(loss.detach())
            examples += len(batch)
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
        step += 1
        result.losses.append(loss_value)
        train_seconds += time.perf_counter() - step_start
        rate = examples / max(train_seconds, 1e-9)  # training only, refreshes excluded
        if step % config.log_every == 0 or step == config.steps:
            _log(
                out,
                {
                    "step": step,
                    "loss": round(loss_value, 6),
                    "lr": scheduler.get_last_lr()[0],
                    "examples_per_s": round(rate, 2),
                    "elapsed_s": round(time.perf_counter() - started, 1),
                },
            )
        if progress is not None:
            progress(TrainProgress(step, config.steps, loss_value, scheduler.get_last_lr()[0], rate))
        refresh_now = bool(config.refresh_every and step % config.refresh_every == 0 and step < config.steps)
        refresh_now = refresh_now or (step == config.steps and config.refresh_at_end)
        save_now = refresh_now or step == config.steps or (config.save_every and step % config.save_every == 0)
        if save_now:
            extra = {"pools": str(pools), "best": str(best) if best else None, "refreshes": refreshes}
            path = save_checkpoint(checkpoint_dir(out, step), model, config, optimizer, scheduler, step, extra)
            if refresh_now:
                if progress is not None:
                    progress(TrainProgress(step, config.steps, loss_value, scheduler.get_last_lr()[0], rate, "refresh"))
                pools, best = _refresh(config, backend, path, step, refreshes, best, device, pools)
                if step < config.steps:
                    data = PoolData(pools, config.sampler, config.seed)
                extra = {"pools": str(pools), "best": str(best) if best else None, "refreshes": refreshes}
                save_checkpoint(path, model, config, optimizer, scheduler, step, extra)
                model.train()
            prune(out, config.keep_checkpoints, {best} if best else set())
            result.final = path
    result.best = best
    result.seconds = time.perf_counter() - started
    result.examples_per_s = examples / max(train_seconds, 1e-9)
    return result


def _batch_loss(
    model: DualEncoder, batch: list[Example], backend: Backend, config: TrainConfig, device: torch.device
) -> torch.Tensor:
    ids = [doc for ex in batch for doc in (ex.positive, *ex.negatives)]
    docs = backend.get(config.index, sorted(set(ids)))
    missing = [d for d in ids if d not in docs]
    if missing:
        raise ConfigError(
            f"{len(missing)} pool documents are not in index '{config.index}' (e.g. {missing[0]}); "
            "mine the pools again against this index"
        )
    texts: list[str] = []
    positives: list[int] = []
    groups: list[int] = []
    for i, ex in enumerate(batch):
        positives.append(len(texts))
        for doc_id in (ex.positive, *ex.negatives):
            doc = docs[doc_id]
            texts.append(f"{doc.title} {doc.text}" if doc.title else doc.text)
            groups.append(i)
    q = model.embed([ex.query for ex in batch], query=True, device=device)  # (B, d)
    p = model.embed(texts, query=False, device=device)  # (P, d)
    return contrastive_loss(
        q,
        p,
        torch.tensor(positives, device=device),
        torch.tensor(groups, device=device),
        config.temperature,
        config.in_batch,
    )


def _optimizer(model: DualEncoder, config: TrainConfig) -> torch.optim.Optimizer:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "LayerNorm" in name or name.endswith("bias") else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr)


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> Any:
    warmup = math.ceil(config.warmup * config.steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (config.steps - step) / max(1, config.steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _autocast(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    if config.precision == "fp32" or (config.precision == "auto" and device.type != "cuda"):
        return None
    if config.precision == "fp16" or (device.type == "cuda" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def _mine(config: TrainConfig, backend: Backend, out: Path) -> Path:
    from hybrid.query_encoder import open_query_encoder

    out.parent.mkdir(parents=True, exist_ok=True)
    job = _mine_job(config, out)
    run_mine(job, backend, open_query_encoder(backend.info(config.index).model))
    return out


def _mine_job(config: TrainConfig, out: Path) -> MineJob:
    return MineJob(
        index=config.index,
        queries=config.queries,
        out=out,
        qrels=config.qrels,
        answers=config.answers,
        bm25_depth=config.bm25_depth,
        knn_depth=config.knn_depth,
        recreate=True,
    )


def _refresh(
    config: TrainConfig,
    backend: Backend,
    checkpoint: Path,
    step: int,
    history: list[dict[str, Any]],
    best: Path | None,
    device: torch.device,
    current_pools: Path,
) -> tuple[Path, Path | None]:
    pools = config.out / "pools" / f"pools-{step:07d}.jsonl.gz"
    dev = (config.dev_queries, config.dev_qrels) if config.dev_queries and config.dev_qrels else None
    last = step >= config.steps  # the final refresh only re-embeds: no pools are needed after it
    result = refresh(backend, checkpoint, _mine_job(config, pools), str(device), dev, remine=not last)
    if last:
        pools = current_pools
    entry = {
        "step": step,
        "version": result.version,
        "documents": result.documents,
        "index_s": round(result.index_seconds, 1),
        "mine_s": round(result.mine_seconds, 1),
        "dev_ndcg@10": result.dev_ndcg10,
    }
    history.append(entry)
    _log(config.out, {"refresh": entry})
    if result.dev_ndcg10 is not None:
        scores = [h["dev_ndcg@10"] for h in history if h.get("dev_ndcg@10") is not None]
        if result.dev_ndcg10 >= max(scores):
            best = config.out / "best"
            shutil.rmtree(best, ignore_errors=True)
            shutil.copytree(checkpoint, best)
            (best / "best.json").write_text(json.dumps(entry, indent=1) + "\n")
    return pools, best


def _log(out: Path, record: dict[str, Any]) -> None:
    with (out / LOG_FILE).open("a") as fh:
        fh.write(json.dumps(record) + "\n")
