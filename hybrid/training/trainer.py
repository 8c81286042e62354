"""The training loop: contrastive loss over sampled negatives, checkpoints, refresh.

The index decides how vectors are made: training starts from the index's own model (or
one re-embedded into it with ``reembed``), truncates for training batches only, saves
checkpoints with the index's settings, and every refresh re-embeds with those settings.

The loop is here (schedule, logging, checkpoints, the guard, refreshes); what one step
computes is in :mod:`hybrid.training.step`.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
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
from hybrid.training.data import PoolData, pool_table
from hybrid.training.distributed import Distributed
from hybrid.training.guard import Guard, dev_split
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
from hybrid.training.step import Inputs as _Inputs  # noqa: F401 - tests import the step's pieces from here
from hybrid.training.step import Stepper, micro_step  # noqa: F401

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
    device = dist.device(config.device)
    dist.start(device)
    torch.set_num_threads(cpu_threads())  # this process's share; encoders built in training keep it
    _check_processes(config, dist)
    job = _Job(config, backend, dist, device, progress, started)
    previous = latest_checkpoint(config.out) if config.out.exists() else None
    run, state, guard, notes = _begin(job, previous, resume, allow_config_change)
    model = prepare_model(config, run, device)
    guarded = dist.share(guard is not None if dist.main else None)
    data = _pool_data(run, config)
    steps = config.total_steps(len(data))
    if state.get("steps") and config.steps is None and state.get("epochs") == config.epochs:
        steps = int(state["steps"])  # the schedule stays fixed even if a refresh changed the query count
    passages = PassageVectors(backend, config.index, run.recipe.dims) if config.update == "query" else None
    stepper = Stepper.create(model, config, backend, dist, device, steps, passages=passages)
    stepper.restore(state)
    result = TrainResult(
        final=previous or config.out, steps=steps, refreshes=run.refreshes, best=run.best, dev=run.dev, notes=notes
    )
    result.plan = {**run.plan(config, data, steps), "processes": dist.world, "memory": stepper.memory.to_dict()}
    loop = _Loop(job, stepper, run, data, result, guard, guarded, step=int(state.get("step", 0)))
    loop.begin(fresh=not state)
    loop.train()
    return loop.finish()


@dataclass(frozen=True)
class _Job:
    """What every part of a run reads."""

    config: TrainConfig
    backend: Backend
    dist: Distributed
    device: torch.device
    progress: Callable[[TrainProgress], None] | None
    started: float  # time.perf_counter() when train was called


def _check_processes(config: TrainConfig, dist: Distributed) -> None:
    """Refuse options that work in one process only, or more processes than queries."""
    if dist.enabled and config.update == "query":
        raise ConfigError("--update query trains in one process (its steps embed queries only)")
    if dist.enabled and config.grad_cache_chunk:
        raise ConfigError("--grad-cache-chunk works in one process; with several, each holds only its share")
    if dist.world > config.batch_size:
        raise ConfigError(
            f"--batch-size {config.batch_size} is smaller than the {dist.world} processes; each needs a query"
        )


def _begin(
    job: _Job, previous: Path | None, resume: bool, allow_change: bool
) -> tuple[RunState, dict[str, Any], Guard | None, list[str]]:
    """Rank 0 settles the run (config, recipe, dev split, pools, guard) as a new run starts it
    or ``previous`` saved it; every rank takes rank 0's run and the checkpoint's state.
    Returns (run, state, guard: rank 0's, notes for the run's summary)."""
    config, backend, dist, out = job.config, job.backend, job.dist, job.config.out
    run: RunState | None = None
    state: dict[str, Any] = {}
    guard: Guard | None = None
    notes: list[str] = []
    if dist.main:
        if previous is not None and not resume:
            raise ConfigError(f"{out} already has checkpoints; pass --resume to continue, or choose another --out")
        if resume and previous is None:
            raise ConfigError(f"nothing to resume in {out}: no checkpoint found")
        out.mkdir(parents=True, exist_ok=True)
        check_config(out, config, resume, allow_change)
        shutil.rmtree(out / "refresh", ignore_errors=True)  # shares of a refresh a crash cut short
        with dist.alone():
            run = start_run(config, backend, previous, job.device)
            state = load_state(previous) if previous is not None else {}
            if not state:
                run.split, note = dev_split(config)
                if note:
                    log.warning(note)
                    notes.append(note)
            # The guard first: a dev set that does not match the index is refused before mining.
            guard = _start_guard(config, backend, run, state)
            skipped = guard.pool.note(config.index) if guard is not None and not state else None
            if skipped:
                log.warning(skipped)
                notes.append(skipped)
            prepare_pools(config, backend, run, state, job.device)
            if previous is not None and state.get("refresh_pending"):
                update_state(previous, {**run.state(), "refresh_pending": False})  # redone: never again
            pool_table(run.pools)  # built once, here: the other ranks map rank 0's table
    shared: RunState = dist.share(run)  # the other ranks take rank 0's run as it is
    if not dist.main:
        state = load_state(previous) if previous is not None else {}
    return shared, state, guard, notes


@dataclass
class _Loop:
    """The steps of a run and what happens between them: logging, checkpoints, the guard's
    say on each refresh, refreshes; what carries from one step to the next."""

    job: _Job
    stepper: Stepper
    run: RunState  # rank 0's, shared with the others after every checkpoint
    data: PoolData
    result: TrainResult
    guard: Guard | None  # rank 0's; None on the others
    guarded: bool  # a guard runs (known to every rank)
    step: int  # optimizer steps done
    first_step: int = -1  # where this process started (a resumed run's checkpoint)
    examples: int = 0
    train_seconds: float = 0.0  # in training steps only

    def __post_init__(self) -> None:
        self.first_step = self.step

    def begin(self, fresh: bool) -> None:
        """Report the plan; a ``fresh`` run (no checkpoint) logs it and scores the index as
        it is on dev (step 0)."""
        job, result = self.job, self.result
        if job.progress is not None and job.dist.main:
            job.progress(TrainProgress(self.step, result.steps, float("nan"), 0.0, 0.0, "plan", result.plan))
        if fresh and job.dist.main:
            write_log(job.config.out, {"plan": result.plan})
            with job.dist.alone():
                self.run.evaluate_dev(job.config, job.backend, 0, None)
        self.run = job.dist.share(self.run if job.dist.main else None)

    def train(self) -> None:
        """Every step left; after a step at a save or refresh point, a checkpoint."""
        config, steps = self.job.config, self.result.steps
        self.stepper.model.train()
        while self.step < steps:
            step_start = time.perf_counter()
            loss_value, examples = self.stepper.run(self.step, self.data)
            self.step += 1
            self.examples += examples
            self.result.losses.append(loss_value)
            self.train_seconds += time.perf_counter() - step_start
            rate = self.examples / max(self.train_seconds, 1e-9)  # training only, refreshes excluded
            report = TrainProgress(self.step, steps, loss_value, self.stepper.lr, rate)
            report.estimate = self._log(report)
            if self.job.progress is not None and self.job.dist.main:
                self.job.progress(report)
            step = self.step
            refresh_now = bool(config.refresh_every and step % config.refresh_every == 0 and step < steps)
            refresh_now = refresh_now or (step == steps and config.refresh_at_end and not self.guarded)
            if refresh_now or step == steps or (config.save_every and step % config.save_every == 0):
                self._checkpoint(refresh_now, replace(report, phase="refresh", estimate=None))

    def _log(self, report: TrainProgress) -> dict[str, Any] | None:
        """On log steps, rank 0 writes the step's line; returns the time estimate made at
        the first of them (None at every other step)."""
        config, step, steps = self.job.config, report.step, report.steps
        if not (self.job.dist.main and (step % config.log_every == 0 or step == steps)):
            return None
        elapsed = round(time.perf_counter() - self.job.started, 1)
        rate = report.examples_per_s
        record = {"step": step, "loss": round(report.loss, 6), "lr": report.lr, "examples_per_s": round(rate, 2)}
        estimate = None
        if self.result.estimate is None and step < steps:
            estimate = self.result.estimate = time_estimate(step, steps, self.train_seconds, rate, self.first_step)
            record["eta_s"] = estimate["eta_s"]
            log.info("step %d: %.2f examples/s; the steps left take about %.0f s", step, rate, estimate["eta_s"])
        write_log(config.out, {**record, "elapsed_s": elapsed})
        return estimate

    def _checkpoint(self, refresh_now: bool, refreshing: TrainProgress) -> None:
        """Save this step; refresh the index with it unless the guard says it is worse than
        the base; prune. ``refreshing``: the progress reported when a refresh starts."""
        job, dist, step = self.job, self.job.dist, self.step
        path = checkpoint_dir(job.config.out, step)
        if dist.main:
            # Saved before the refresh with the refresh marked pending: a crash during it redoes it on resume.
            path = self._save(pending=refresh_now)
            if self.guard is not None:
                with dist.alone():  # scored as saved: the guard may choose any checkpoint
                    allowed = self.guard.allows_refresh(path, step, job.device)
                if refresh_now and not allowed:
                    log.warning("step %d: worse than the base on dev; the index is not refreshed with it", step)
                    self.result.notes.append(f"step {step}: worse than the base on dev, not refreshed into the index")
                refresh_now = refresh_now and allowed
        if self.guarded:
            refresh_now = dist.share(refresh_now if dist.main else None)
        if dist.main and refresh_now and job.progress is not None:
            job.progress(refreshing)
        shares = _encode_shares(job, self.run, path, step) if refresh_now else []
        if dist.main:
            self._refresh(path, refresh_now, shares)
        self.run = dist.share(self.run if dist.main else None)  # the others wait for the checkpoint and refresh
        if refresh_now:
            self.stepper.model.train()
            if step < self.result.steps:
                self.data = _pool_data(self.run, job.config)
        self.result.final = path

    def _save(self, pending: bool) -> Path:
        """The checkpoint of this step, with what resuming needs (rank 0)."""
        config, stepper, run = self.job.config, self.stepper, self.run
        extra = {
            **run.state(),
            "steps": self.result.steps,
            "epochs": config.epochs,
            "refresh_pending": pending,
            "scaler": stepper.scaler.state_dict() if stepper.scaler else None,
            "guard": self.guard.state() if self.guard else None,
        }
        path = checkpoint_dir(config.out, self.step)
        saved = save_checkpoint(
            path, stepper.model, config, stepper.optimizer, stepper.scheduler, self.step, extra, run.recipe.settings()
        )
        if config.update == "query":
            write_note(saved, run.recipe)
        return saved

    def _refresh(self, path: Path, refresh_now: bool, shares: list[Path]) -> None:
        """With ``refresh_now``, the index re-embedded (or its query model replaced) by the
        checkpoint at ``path``; then old checkpoints and models pruned (rank 0)."""
        config, backend, dist, run, step = self.job.config, self.job.backend, self.job.dist, self.run, self.step
        steps = self.result.steps
        if refresh_now:
            with dist.alone():
                if config.update == "query":
                    run.apply_query(config, backend, path, step)
                else:
                    run.refresh(config, backend, path, step, last=step >= steps, device=self.job.device, shares=shares)
                if step < steps:
                    pool_table(run.pools)
            update_state(path, {**run.state(), "refresh_pending": False})
        protect = ({run.best} if run.best else set()) | (self.guard.protected() if self.guard else set())
        prune(config.out, config.keep_checkpoints, protect)
        prune_models(config.out, run.recipe)

    def finish(self) -> TrainResult:
        """The guard's choice (when one runs) and the run's totals."""
        job, result = self.job, self.result
        if self.guarded:
            if job.dist.main and self.guard is not None:
                with job.dist.alone():
                    result.guard = _finish_guard(job, self.run, self.guard, result.final, result.steps)
            self.run = job.dist.share(self.run if job.dist.main else None)
        result.best = self.run.best
        result.seconds = time.perf_counter() - job.started
        result.examples_per_s = self.examples / max(self.train_seconds, 1e-9)
        result.train_seconds = self.train_seconds
        return result


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
    return PoolData(
        run.pools, run.sampler, config.seed, exclude, config.positives_per_query, grades=config.grades == "weight"
    )


def _start_guard(config: TrainConfig, backend: Backend, run: RunState, state: dict[str, Any]) -> Guard | None:
    """The guard of a new run (set up from the index as it is), or the one a checkpoint saved."""
    if state.get("guard"):
        return Guard.restore(config, backend, state["guard"])
    if state or not config.guard or run.split is None:
        return None
    return Guard.start(config, backend, run.split, run.recipe)


def _finish_guard(job: _Job, run: RunState, guard: Guard, final: Path, steps: int) -> Decision:
    """The guard's choice at the end of the run; the index is re-embedded with it only
    when it wins (and the run refreshes at its end)."""
    config, backend, device, progress = job.config, job.backend, job.device, job.progress
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


def _encode_shares(job: _Job, run: RunState, checkpoint: Path, step: int) -> list[Path]:
    """With several processes, each embeds its share of the corpus for rank 0's refresh.

    Rank 0 first keeps the checkpoint's model where every rank reads it; each rank writes
    its rows to OUT/refresh/step-N/rank-R; rank 0 then writes them all as the new version
    (checked row by row against the index) and swaps. One process: rank 0 encodes alone.
    """
    config, backend, dist = job.config, job.backend, job.dist
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
    encoder = run.refresh_encoder(config, checkpoint, job.device)
    work = config.out / "refresh" / f"step-{step:07d}"
    folders = [work / f"rank-{r}" for r in range(dist.world)]
    encode_share(backend, config.index, encoder, dist.part(count), folders[dist.rank])
    del encoder
    dist.barrier()
    return folders


__all__ = ["TrainProgress", "TrainResult", "train"]
