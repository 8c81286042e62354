"""One training step: forward, loss and backward of each micro-batch, then the update.

A micro-batch is embedded in one of four ways: whole (one process), in GradCache chunks
(a batch larger than memory, :mod:`hybrid.training.gradcache`), this process's share of it
gathered with every other process's (:mod:`hybrid.training.distributed`), or its queries
alone against the index's stored passage vectors (``update == "query"``). :class:`Stepper`
keeps what a step needs from one to the next (model, optimizer, schedule, mixed
precision); :func:`hybrid.training.trainer.train` runs the loop around it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from hybrid.backends.base import Backend
from hybrid.errors import ConfigError
from hybrid.training.config import TrainConfig
from hybrid.training.data import Example, PoolData
from hybrid.training.distributed import Distributed
from hybrid.training.gradcache import cached_backward
from hybrid.training.memory import Batch, MemoryPlan, ModelShape, enable_checkpointing, plan_memory
from hybrid.training.model import DualEncoder, contrastive_loss, distill_loss, false_negative_mask
from hybrid.training.query_side import PassageVectors

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Stepper:
    """The model and what updates it, kept from step to step."""

    model: DualEncoder
    config: TrainConfig
    backend: Backend  # the index's: a micro-batch's texts are read from it
    dist: Distributed
    device: torch.device
    optimizer: torch.optim.Optimizer
    scheduler: Any
    autocast: torch.dtype | None  # None: fp32
    scaler: Any  # fp16's GradScaler, else None
    memory: MemoryPlan
    passages: PassageVectors | None = None  # query side only: the index's stored vectors

    @classmethod
    def create(
        cls,
        model: DualEncoder,
        config: TrainConfig,
        backend: Backend,
        dist: Distributed,
        device: torch.device,
        steps: int,
        *,
        passages: PassageVectors | None = None,
    ) -> Stepper:
        """A fresh optimizer and a schedule over ``steps``; the memory plan of ``model``
        (which may turn gradient checkpointing on, see :func:`memory_plan`)."""
        optimizer = new_optimizer(model, config)
        autocast = autocast_dtype(config, device)
        return cls(
            model=model,
            config=config,
            backend=backend,
            dist=dist,
            device=device,
            optimizer=optimizer,
            scheduler=linear_schedule(optimizer, config.warmup, steps),
            autocast=autocast,
            scaler=torch.amp.GradScaler("cuda") if autocast == torch.float16 else None,
            memory=memory_plan(config, model, dist, device),
            passages=passages,
        )

    def restore(self, state: dict[str, Any]) -> None:
        """Optimizer, schedule and loss scale as a checkpoint's ``state`` saved them."""
        if not state:
            return
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def run(self, step: int, data: PoolData) -> tuple[float, int]:
        """Optimizer step ``step`` (0-based) over ``grad_accum`` micro-batches of ``data``;
        returns its loss and the examples it trained on."""
        config = self.config
        loss_value, examples = 0.0, 0
        for micro in range(config.grad_accum):
            torch.manual_seed(config.seed * 1_000_003 + step * config.grad_accum + micro)  # dropout per step
            batch = data.batch(step * config.grad_accum + micro, config.batch_size)
            inputs = batch_inputs(batch, self.backend, config, self.device)
            loss = micro_step(
                self.model,
                inputs,
                config,
                self.device,
                self.autocast,
                self.scaler,
                self.dist,
                self.memory.chunk,
                self.passages,
            )
            loss_value += float(loss.detach())
            examples += len(batch)
        optimizer_step(self.model, self.optimizer, self.scheduler, self.scaler, config, self.dist)
        return loss_value, examples

    @property
    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])


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
    inputs: Inputs,
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

    if passages is None and chunk and not dist.enabled:  # GradCache runs its own backward
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
        if passages is not None:
            loss = _query_side_loss(model, inputs, passages, loss_of, device)
        elif dist.enabled:
            loss = loss_of(*_embed_share(model, inputs, dist, device))
        else:
            loss = _whole_loss(model, inputs, loss_of, device)
    (scaler.scale(loss) if scaler else loss).backward()
    return loss.detach()


def _whole_loss(model: DualEncoder, inputs: Inputs, loss_of: Loss, device: torch.device) -> torch.Tensor:
    """The micro-batch embedded at once, in this one process."""
    q = model.embed(inputs.queries, query=True, device=device)  # (B, d)
    p = model.embed(inputs.passages, query=False, device=device)  # (P, d)
    return loss_of(q, p)


def _query_side_loss(
    model: DualEncoder, inputs: Inputs, passages: PassageVectors, loss_of: Loss, device: torch.device
) -> torch.Tensor:
    """The queries embedded against the index's stored passage vectors (no gradient there)."""
    q = model.embed(inputs.queries, query=True, device=device)  # (B, d)
    return loss_of(q, torch.from_numpy(passages.get(inputs.ids)).to(device))  # (P, d): no gradient


def _embed_share(
    model: DualEncoder, inputs: Inputs, dist: Distributed, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's queries and their passages embedded, gathered with every other rank's."""
    start, end = dist.part(len(inputs.queries))
    first = [*inputs.positives.tolist(), len(inputs.passages)]  # each query's passages are contiguous
    q = model.embed(inputs.queries[start:end], query=True, device=device)
    p = model.embed(inputs.passages[first[start] : first[end]], query=False, device=device)
    return dist.gather(q), dist.gather(p)


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


@dataclass
class Inputs:
    """One micro-batch's texts and the loss's bookkeeping."""

    queries: list[str]
    passages: list[str]
    ids: list[str]  # the passages' document ids, in column order
    positives: torch.Tensor  # (B,) query i's positive column
    groups: torch.Tensor  # (P,) the query each passage belongs to
    mask: torch.Tensor  # (B, P) labelled positives of query i that are not its target
    targets: torch.Tensor  # (B, P) query i's labelled positives (the numerator of the multi-positive loss)
    gains: torch.Tensor  # (B, P) each target's weight in that numerator: its grade over the query's best
    teacher: torch.Tensor  # (P,) the mining model's score of each passage for its own query

    def loss(self, q: torch.Tensor, p: torch.Tensor, config: TrainConfig) -> torch.Tensor:
        targets = self.targets if config.positives == "all" else None
        gains = self.gains if targets is not None and config.grades == "weight" else None
        loss = contrastive_loss(
            q, p, self.positives, self.groups, config.temperature, config.in_batch, self.mask, targets, gains
        )
        if config.distill > 0:
            loss = loss + config.distill * distill_loss(q, p, self.groups, self.teacher, config.temperature)
        return loss


def batch_inputs(batch: list[Example], backend: Backend, config: TrainConfig, device: torch.device) -> Inputs:
    """The texts of ``batch``'s documents, read from the index, and the loss's bookkeeping.

    Raises:
        ConfigError: a pool document is not in the index (the pools are from another corpus).
    """
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
    gains = torch.ones(len(batch), len(ids))
    for i, ex in enumerate(batch):
        weight = dict(ex.gains)  # empty unless grades are weighted and differ
        for col, doc_id in enumerate(ids if weight else ()):
            if doc_id in weight:
                gains[i, col] = weight[doc_id]
    return Inputs(
        queries=[ex.query for ex in batch],
        passages=texts,
        ids=ids,
        positives=torch.tensor(positives, device=device),
        groups=torch.tensor(groups, device=device),
        mask=mask.to(device),
        targets=targets.to(device),
        gains=gains.to(device),
        teacher=torch.tensor(teacher, dtype=torch.float32, device=device),
    )


def new_optimizer(model: DualEncoder, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, LayerNorm and other 1-d parameters."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "LayerNorm" in name or name.endswith("bias") else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr)


def linear_schedule(optimizer: torch.optim.Optimizer, warmup_fraction: float, steps: int) -> Any:
    """Linear warm-up over ``warmup_fraction`` of ``steps``, then linear decay to 0."""
    warmup = math.ceil(warmup_fraction * steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (steps - step) / max(1, steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast type ``config.precision`` means on ``device`` (None: fp32)."""
    if config.precision == "fp32" or (config.precision == "auto" and device.type != "cuda"):
        return None
    if config.precision == "fp16" or (device.type == "cuda" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16
