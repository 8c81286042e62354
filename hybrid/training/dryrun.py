"""``hybrid train --dry-run``: a run's plan and the time its steps take, without training.

The run is set up as :func:`hybrid.training.trainer.train` sets it up (the index's recipe,
the dev split, the pools, the model at the training lengths, the memory plan), then one or
two real steps are timed. The index is never changed and nothing is written to ``OUT``
but ``OUT/dry-run/pools/``: the pools, when they had to be mined (mining is the slow part
of a start, and a dry run repeated reuses them, as a real run does with ``--pools``).
Everything else the setup wrote (the carved dev split) is deleted.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from hybrid.backends.base import Backend
from hybrid.encoder import cpu_threads
from hybrid.errors import ConfigError
from hybrid.training.config import TrainConfig
from hybrid.training.data import PoolData
from hybrid.training.distributed import Distributed
from hybrid.training.guard import dev_split
from hybrid.training.memory import MemoryPlan
from hybrid.training.model import DualEncoder
from hybrid.training.query_side import PassageVectors
from hybrid.training.setup import RunState, pools_match, prepare_model, prepare_pools, start_run
from hybrid.training.step import (
    autocast_dtype,
    batch_inputs,
    linear_schedule,
    memory_plan,
    micro_step,
    new_optimizer,
    optimizer_step,
)
from hybrid.training.trainer import _pool_data

log = logging.getLogger(__name__)
DRY_RUN = "dry-run"  # OUT/dry-run: the dry run's scratch folder; only its pools/ stay
POOLS = Path("pools") / "pools-0000000.jsonl.gz"
LONG_STEP_S = 60.0  # a first step this long is timed alone: its one-off costs are lost in it


def dry_run(config: TrainConfig, backend: Backend) -> dict[str, Any]:
    """The run's plan (as :func:`~hybrid.training.trainer.train` would start it) with
    ``probe``: the seconds a step takes and the time ``steps`` will; ``pools_kept``: the
    pools mined for it, or None.

    Raises:
        ConfigError: ``reembed`` (it would change the index); what ``train`` raises at its start.
    """
    if config.reembed:
        raise ConfigError("--dry-run never changes the index, so it cannot --reembed; leave out --reembed to plan")
    scratch = config.out / DRY_RUN
    mined = scratch / POOLS
    made_out = not config.out.exists()
    _clear(scratch)  # what a dry run cut short left, but its pools
    device = Distributed().device(config.device)
    torch.set_num_threads(cpu_threads())
    try:
        run, data, steps = _setup(replace(config, out=scratch), backend, device, mined)
        model = prepare_model(config, run, device)
        memory = memory_plan(config, model, Distributed(), device)
        plan = {**run.plan(config, data, steps), "processes": 1, "memory": memory.to_dict()}
        passages = PassageVectors(backend, config.index, run.recipe.dims) if config.update == "query" else None
        plan["probe"] = _probe(config, backend, model, data, (memory, passages), steps, device)
    finally:
        _clear(scratch)
        if made_out and config.out.is_dir() and not any(config.out.iterdir()):
            config.out.rmdir()
    plan["pools_kept"] = str(mined) if mined.is_file() else None
    return plan


def _clear(scratch: Path) -> None:
    """Delete the scratch folder but its pools (and the folder itself when nothing is left)."""
    if not scratch.is_dir():
        return
    for item in scratch.iterdir():
        if item.name != POOLS.parent.name:
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    if not any(scratch.iterdir()):
        scratch.rmdir()


def _setup(config: TrainConfig, backend: Backend, device: torch.device, mined: Path) -> tuple[RunState, PoolData, int]:
    """Recipe, dev split and pools as a new run settles them (``config.out``: the scratch)."""
    run = start_run(config, backend, None, device)
    run.split, note = dev_split(config)
    if note:
        log.warning(note)
    if config.pools is None and mined.is_file() and pools_match(mined, backend, config.index, run.recipe):
        config = replace(config, pools=mined)  # an earlier dry run's, still of this index version
    prepare_pools(config, backend, run, {}, device)
    data = _pool_data(run, config)
    return run, data, config.total_steps(len(data))


def _probe(
    config: TrainConfig,
    backend: Backend,
    model: DualEncoder,
    data: PoolData,
    how: tuple[MemoryPlan, PassageVectors | None],
    steps: int,
    device: torch.device,
) -> dict[str, Any]:
    """Time real steps (the first pays one-off costs, so a second is timed unless the first
    was long); the estimate is the last step's time for every step of the run."""
    optimizer = new_optimizer(model, config)
    scheduler = linear_schedule(optimizer, config.warmup, steps)
    autocast = autocast_dtype(config, device)
    scaler = torch.amp.GradScaler("cuda") if autocast == torch.float16 else None
    dist = Distributed()
    memory, passages = how
    model.train()
    times: list[float] = []
    while len(times) < min(2, steps) and not (times and times[0] > LONG_STEP_S):
        start = time.perf_counter()
        for micro in range(config.grad_accum):
            index = len(times) * config.grad_accum + micro
            torch.manual_seed(config.seed * 1_000_003 + index)
            inputs = batch_inputs(data.batch(index, config.batch_size), backend, config, device)
            micro_step(model, inputs, config, device, autocast, scaler, dist, memory.chunk, passages)
        optimizer_step(model, optimizer, scheduler, scaler, config, dist)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    step_s = times[-1]
    return {
        "steps_timed": len(times),
        "step_s": [round(t, 2) for t in times],
        "examples_per_s": round(config.batch_size * config.grad_accum / step_s, 2),
        "training_s": round(step_s * steps, 1),
    }


__all__ = ["DRY_RUN", "dry_run"]
