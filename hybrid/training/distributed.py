"""Data-parallel training across processes (NCCL on CUDA, gloo on CPU).

Every rank draws the same global batch (the data order is a function of seed and step),
embeds only its slice of the queries and of their passages, and all-gathers the
embeddings; its own slice keeps its gradient, so the in-batch softmax runs over the whole
global batch exactly as one process would. The loss is the same on every rank; each rank's
backward reaches the parameters only through its own slice, so summing the gradients
across ranks (one all-reduce of a flat buffer) gives the single-process gradient of the
global batch, and every rank takes the same optimizer step. Rank 0 alone mines, refreshes,
evaluates, logs and writes checkpoints; the others wait for it and take its run state.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

GROUP_TIMEOUT = timedelta(hours=12)  # a refresh of a large corpus on rank 0 keeps the others waiting


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str | None) -> torch.device:
        """CUDA device ``local_rank`` when CUDA is used, else the requested (or CPU) device."""
        if requested is None:
            requested = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(requested)
        if self.enabled and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def start(self, device: torch.device) -> None:
        """Join the process group (rendezvous from torchrun's environment).

        The timeout is long: the other ranks wait in a collective while rank 0 re-embeds the
        whole corpus during a refresh.
        """
        if self.enabled and not torch.distributed.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)  # NCCL collectives use the current device
                torch.distributed.init_process_group(
                    "nccl", rank=self.rank, world_size=self.world, timeout=GROUP_TIMEOUT, device_id=device
                )
            else:
                torch.distributed.init_process_group(
                    "gloo", rank=self.rank, world_size=self.world, timeout=GROUP_TIMEOUT
                )

    @contextmanager
    def alone(self) -> Iterator[None]:
        """Rank 0's own work while the other ranks wait (refresh, mining, evaluation).

        Each of N processes is given 1/N of the CPU cores; while the others wait, rank 0
        uses them all (torch's threads, which encoders built meanwhile keep, and FAISS's
        OpenMP pool), then goes back to its share.
        """
        if not (self.enabled and self.main):
            yield
            return
        cores = len(os.sched_getaffinity(0))
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(cores)
            _faiss_threads(cores)
            yield
        finally:
            torch.set_num_threads(threads)
            _faiss_threads(threads)

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (picklable objects)."""
        if not self.enabled:
            return value
        box = [value if self.main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def part(self, n: int) -> tuple[int, int]:
        """This rank's contiguous share ``[start, end)`` of ``n`` items (sizes differ by at most 1)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """Rows of every rank in rank order; this rank's rows keep their gradient."""
        if not self.enabled:
            return local
        sizes = [torch.zeros(1, dtype=torch.long, device=local.device) for _ in range(self.world)]
        torch.distributed.all_gather(sizes, torch.tensor([local.shape[0]], device=local.device))
        most = int(max(s.item() for s in sizes))
        padded = torch.zeros((most, *local.shape[1:]), dtype=local.dtype, device=local.device)
        padded[: local.shape[0]] = local.detach()
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        torch.distributed.all_gather(parts, padded)
        rows = [p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)]
        rows[self.rank] = local
        return torch.cat(rows)

    def sum_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient across ranks, in one flat all-reduce."""
        if not self.enabled:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        offset = 0
        for param, grad in zip(parameters, grads, strict=True):
            n = grad.numel()
            param.grad = flat[offset : offset + n].view_as(grad).clone()
            offset += n

    def stop(self) -> None:
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _faiss_threads(n: int) -> None:
    """Size FAISS's OpenMP pool (its own, apart from torch's), where mining's kNN runs."""
    try:
        import faiss
    except ImportError:  # pragma: no cover - FAISS is a dependency of the embedded store
        return
    faiss.omp_set_num_threads(n)
