"""Checkpoints: Hugging Face model + tokenizer + pooling, resolved config, trainer state."""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hybrid.encoder import EncoderSettings
from hybrid.errors import CheckpointError
from hybrid.training.config import TrainConfig
from hybrid.training.model import DualEncoder

STATE_FILE = "trainer_state.pt"
CONFIG_FILE = "train_config.json"
PREFIX = "checkpoint-"


def checkpoint_dir(out: Path, step: int) -> Path:
    return out / f"{PREFIX}{step:07d}"


def completed(out: Path) -> list[Path]:
    """The complete checkpoints of a run directory, oldest first: ``checkpoint-NNNNNNN``
    directories holding a trainer state (never the ``.tmp`` sibling a save was killed in)."""
    found = [p for p in out.glob(f"{PREFIX}*") if p.name[len(PREFIX) :].isdigit() and (p / STATE_FILE).is_file()]
    return sorted(found)


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint in a run directory."""
    done = completed(out)
    return done[-1] if done else None


def save_checkpoint(
    path: Path,
    model: DualEncoder,
    config: TrainConfig,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    step: int,
    extra: dict[str, Any],
    settings: EncoderSettings | None = None,
) -> Path:
    """Write a checkpoint atomically (a sibling directory renamed into place).

    ``settings`` are saved with the model (the index's, so the checkpoint embeds like it).
    """
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(tmp, settings)
    (tmp / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=1) + "\n")
    torch.save(
        {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
            **extra,
        },
        tmp / STATE_FILE,
    )
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


def update_state(path: Path, updates: dict[str, Any]) -> None:
    """Replace entries of a checkpoint's trainer state atomically (the weights are unchanged)."""
    state: dict[str, Any] = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
    state.update(updates)
    tmp = path / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path / STATE_FILE)


def load_state(path: Path) -> dict[str, Any]:
    try:
        state: dict[str, Any] = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
    except (EOFError, RuntimeError, pickle.UnpicklingError) as exc:
        raise CheckpointError(
            f"{path / STATE_FILE} cannot be read ({type(exc).__name__}: {exc}); delete {path.name} "
            "to resume from the checkpoint before it"
        ) from exc
    rng = state.get("rng", {})
    if rng:
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
    return state


def prune(out: Path, keep: int, protect: set[Path]) -> None:
    """Delete all but the ``keep`` newest checkpoints (never one in ``protect``)."""
    done = completed(out)
    for old in done[: max(0, len(done) - keep)]:
        if old not in protect:
            shutil.rmtree(old, ignore_errors=True)
