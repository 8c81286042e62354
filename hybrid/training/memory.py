"""How much memory a training step takes, and how to make it fit a budget.

A contrastive step holds the graph of every text in the micro-batch (its queries and each
query's positives and negatives) until the loss is backpropagated. Past a few dozen texts
at a few hundred tokens that is more than a laptop has. Given a budget in bytes, training
keeps the batch, the negatives and the loss the user asked for and changes only how the
step is computed: unchunked when everything fits, else GradCache chunks of as many texts as
fit, on a CPU no more than are worth it (:mod:`hybrid.training.gradcache`, gradients
unchanged), else gradient checkpointing under the chunks. The budget itself comes from the
caller (the CLI reads the machine).

The estimate is worst-case by design: every text is counted at the training max length
(length groups pad only to their own longest, so real batches of short texts take less).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hybrid.errors import ConfigError

if TYPE_CHECKING:
    import torch

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
DEFAULT_SHARE = 0.4  # of the machine's memory (RAM, or free device memory) when no budget is given
DEFAULT_CAP = 8 * GiB
# Bytes per activation element: the estimate is for fp32. Under bf16/fp16 autocast linear
# outputs halve but softmax and LayerNorm stay fp32; counting fp32 keeps a device run safe.
ELEMENT = 4
# The calibrated constant. The hidden-size terms below count what a BERT layer's forward
# keeps for backward; measured peaks of forward+backward steps of all-MiniLM-L6-v2 (CPU,
# fp32, two batch sizes at each of two lengths, fitted once) came out at twice that, since
# backward holds a gradient of about each kept tensor while it walks down the layers. The
# attention term (probabilities, their dropout mask and output) measured as counted.
HIDDEN_FACTOR = 2.0
# With checkpointing only each layer's input stays; backward recomputes a layer while the
# gradient of the one above is still held, so two layers' activations are live at once.
CHECKPOINT_LAYERS = 2
# Weights, gradients, AdamW's two moments and the temporaries of its batched (foreach)
# update, all fp32: the measured fixed part of a step sits at six copies of the weights.
STATE_COPIES = 6
# Besides the model: the interpreter, torch, the tokenizer and the backend's client (the
# embedded store's JVM too) on CPU; on CUDA the allocator's slack and library workspaces.
RUNTIME = {"cpu": 1 * GiB, "cuda": 512 * MiB}
# Chunks smaller than this leave the matrix units idle between tiny forward passes; below
# it, gradient checkpointing (recompute for memory) is the cheaper way to fit.
SMALL_CHUNK = 4
# On a CPU a GradCache chunk larger than this is no faster per text, and past a few dozen
# texts slower: its activations only add memory traffic (`python -m bench train_peer`, the
# chunk sweep in docs/benchmarks.md). A budget that holds more buys nothing there, so it is
# left unspent: the smallest chunk that was as fast as any.
CPU_CHUNK = 16

_UNITS = {"": 1, "b": 1, "k": KiB, "m": MiB, "g": GiB, "t": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgt])(i?)b?|(b))?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from ``6GiB``, ``800MiB``, ``1.5G``, ``2GB`` (decimal) or a plain byte count.

    Raises:
        ConfigError: not a size, or not positive.
    """
    match = _SIZE.match(text)
    if match is None:
        raise ConfigError(f"'{text}' is not a memory size; write it like 6GiB, 800MiB or 1.5G")
    number, prefix, binary, _ = match.groups()
    unit = _UNITS[(prefix or "").lower()]
    if prefix and not binary and text.strip().lower().endswith("b"):
        unit = 1000 ** ("kmgt".index(prefix.lower()) + 1)  # GB, MB: the decimal units
    size = int(float(number) * unit)
    if size <= 0:
        raise ConfigError(f"'{text}' is not a memory size above zero; write it like 6GiB or 800MiB")
    return size


def format_size(size: float, up: bool = False) -> str:
    """``6.0GiB``, ``812MiB``: the unit a person would write; with ``up`` rounded up, so that
    the text passed back as a budget gives at least ``size``."""
    whole = math.ceil if up else round
    if size >= 1 << 40:
        return f"{whole(size / (1 << 40) * 10) / 10:.1f}TiB"
    if size >= GiB:
        return f"{whole(size / GiB * 10) / 10:.1f}GiB"
    if size >= MiB:
        return f"{whole(size / MiB)}MiB"
    return f"{whole(size / KiB)}KiB"


def machine_memory(device: torch.device | None = None) -> int:
    """Bytes this process could train in: a CUDA ``device``'s free memory, else the RAM (or
    the container's limit, when lower)."""
    if device is not None and device.type == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return ram
    return min(ram, int(limit)) if limit.isdigit() else ram


def default_budget(machine: int) -> int:
    """A safe share of ``machine`` bytes (RAM, or free device memory): 40 %, at most 8 GiB."""
    return min(int(machine * DEFAULT_SHARE), DEFAULT_CAP)


def machine_budget(requested: int | None, machine: int) -> tuple[int, str | None]:
    """The budget to train under and a warning when ``requested`` exceeds ``machine``."""
    if requested is None:
        return default_budget(machine), None
    if requested > machine:
        warning = (
            f"--max-memory {format_size(requested)} is more than this machine has "
            f"({format_size(machine)}); training under {format_size(machine)}"
        )
        return machine, warning
    return requested, None


@dataclass(frozen=True)
class ModelShape:
    """What an encoder's memory depends on, from its Hugging Face config."""

    params: int  # every trained parameter (both towers when separate)
    hidden: int
    layers: int
    intermediate: int
    heads: int

    @classmethod
    def of(cls, tower: Any, params: int) -> ModelShape:
        """From a Hugging Face model (BERT-like config names; others map onto them)."""
        config = tower.config
        hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "dim", 0))
        layers = int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layers", 0))
        heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_heads", 0))
        intermediate = int(getattr(config, "intermediate_size", 0) or getattr(config, "hidden_dim", 0) or 4 * hidden)
        if not (hidden and layers and heads):
            raise ConfigError(
                f"cannot size a {type(tower).__name__} for --max-memory (no hidden size, layers or heads in its "
                "config); pass --grad-cache-chunk to choose the chunk yourself"
            )
        return cls(params=params, hidden=hidden, layers=layers, intermediate=intermediate, heads=heads)

    def per_text(self, length: int, checkpointing: bool) -> int:
        """Activation bytes one text of ``length`` tokens holds through a forward+backward."""
        kept = ELEMENT * (9 * self.hidden + 2 * self.intermediate) + 2 * self.hidden  # + two dropout masks
        attention = (2 * ELEMENT + 1) * self.heads * length
        layer = HIDDEN_FACTOR * kept + attention  # per token
        if checkpointing:
            return int(length * (self.layers * ELEMENT * self.hidden + CHECKPOINT_LAYERS * layer))
        return int(length * self.layers * layer)

    def fixed(self, device_type: str) -> int:
        """Bytes a step holds whatever the batch: weights, optimizer state, runtime."""
        return STATE_COPIES * 4 * self.params + RUNTIME.get(device_type, RUNTIME["cuda"])


@dataclass(frozen=True)
class Batch:
    """What one micro-batch asks of memory."""

    queries: int
    passages: int
    length: int  # the longer of the query and passage training max lengths

    @property
    def texts(self) -> int:
        return self.queries + self.passages


@dataclass(frozen=True)
class MemoryPlan:
    """How a step is computed: the GradCache chunk (None: unchunked), checkpointing, and the
    estimate they came from."""

    budget: int | None
    chunk: int | None
    checkpointing: bool
    estimate: int
    fixed: int
    per_text: int
    texts: int
    length: int
    chosen_by: str  # "budget" (with the CPU's cap when it applied), "--grad-cache-chunk" or "no budget"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def line(self) -> str:
        """One line for the run's plan."""
        held = self.chunk if self.chunk is not None and self.chunk < self.texts else self.texts
        how = f"GradCache chunks of {self.chunk} texts" if self.chunk else "unchunked"
        budget = f"budget {format_size(self.budget)}, " if self.budget else ""
        return (
            f"memory: {budget}estimate {format_size(self.estimate)} = {format_size(self.fixed)} model, optimizer "
            f"and runtime + {held} texts x {format_size(self.per_text)} at {self.length} tokens; {how} "
            f"({self.texts} texts per micro-batch, by {self.chosen_by}), gradient checkpointing "
            f"{'on' if self.checkpointing else 'off'}"
        )


def plan_memory(
    shape: ModelShape,
    batch: Batch,
    budget: int | None,
    device_type: str = "cpu",
    chunk: int | None = None,
    checkpointing: bool | None = None,
    chunking: bool = True,
) -> MemoryPlan:
    """The largest way of computing the step that fits ``budget``; on a CPU, GradCache
    chunks of at most ``CPU_CHUNK`` texts.

    ``chunk`` (the user's --grad-cache-chunk) and ``checkpointing`` (True/False: the user's;
    None: when needed) are kept as given; ``chunking`` False when GradCache cannot run
    (several processes). Without a budget the step is computed as asked.

    Raises:
        ConfigError: not even one text per chunk fits; the message names the smallest budget.
    """
    fixed = shape.fixed(device_type)

    def plan(chunk: int | None, ckpt: bool, by: str) -> MemoryPlan:
        per_text = shape.per_text(batch.length, ckpt)
        held = batch.texts if chunk is None else min(chunk, max(batch.queries, batch.passages))
        return MemoryPlan(budget, chunk, ckpt, fixed + per_text * held, fixed, per_text, batch.texts, batch.length, by)

    if chunk is not None:
        return plan(chunk, bool(checkpointing), "--grad-cache-chunk")
    if budget is None:
        return plan(None, bool(checkpointing), "no budget")
    for ckpt, least in _ways(shape, batch.length, checkpointing):
        fits = max(0, budget - fixed) // shape.per_text(batch.length, ckpt)
        if fits >= batch.texts:
            return plan(None, ckpt, "budget")
        if chunking and fits >= least:
            capped = device_type == "cpu" and fits > CPU_CHUNK
            by = f"budget, at most {CPU_CHUNK} a chunk on a CPU" if capped else "budget"
            return plan(min(CPU_CHUNK if capped else int(fits), max(batch.queries, batch.passages)), ckpt, by)
    raise ConfigError(_too_small(shape, batch, budget, device_type, checkpointing, chunking))


def _ways(shape: ModelShape, length: int, checkpointing: bool | None) -> list[tuple[bool, int]]:
    """(checkpointing, smallest chunk worth it), in the order they are tried."""
    if checkpointing is not None:
        return [(checkpointing, 1)]
    if shape.per_text(length, True) >= shape.per_text(length, False):
        return [(False, 1)]  # too few layers for checkpointing to save anything
    return [(False, SMALL_CHUNK), (True, 1)]


def _too_small(
    shape: ModelShape, batch: Batch, budget: int, device_type: str, checkpointing: bool | None, chunking: bool
) -> str:
    held = 1 if chunking else batch.texts
    ckpt = min(_ways(shape, batch.length, checkpointing), key=lambda way: shape.per_text(batch.length, way[0]))[0]
    need = shape.fixed(device_type) + held * shape.per_text(batch.length, ckpt)
    what = "one text per GradCache chunk" if chunking else f"the {batch.texts} texts of this process's share"
    fix = f"the smallest that works is --max-memory {format_size(need, up=True)}"
    if checkpointing is False:
        fix += " (less without --no-grad-checkpointing)"
    if not chunking:
        fix += ", or use more processes, or a smaller --batch-size with --grad-accum"
    return (
        f"--max-memory {format_size(budget)} is too small for {what} at {batch.length} tokens "
        f"{'with' if ckpt else 'without'} gradient checkpointing; {fix}"
    )


def enable_checkpointing(towers: list[Any]) -> None:
    """Gradient checkpointing on every tower: activations recomputed in backward."""
    for tower in towers:
        tower.config.use_cache = False  # no KV cache in an encoder; also silences transformers' warning
        enable = getattr(tower, "activation_checkpointing_enable", None) or tower.gradient_checkpointing_enable
        enable()


__all__ = [
    "Batch",
    "MemoryPlan",
    "ModelShape",
    "default_budget",
    "enable_checkpointing",
    "format_size",
    "machine_budget",
    "machine_memory",
    "parse_size",
    "plan_memory",
]
