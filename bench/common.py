"""Helpers shared by the benchmark scripts (not part of the library)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "datasets"


def machine() -> dict[str, Any]:
    import os

    import torch

    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "platform": platform.platform(),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """A process's memory counters from /proc/PID/status, in kB (RssAnon, VmHWM, ...)."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                out[key] = int(value.split()[0])
    return out


class PeakAnon:
    """The highest anonymous memory (RssAnon) of a process: sampled every 20 ms by a thread
    between ``start`` and ``stop``, and whenever ``sample`` is called."""

    def __init__(self, pid: int | str = "self") -> None:
        self.pid = pid
        self.kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def mib(self) -> float:
        return self.kb / 1024

    def sample(self) -> float:
        """The anonymous memory now, in MiB (the peak is kept)."""
        kb = proc_status(self.pid)["RssAnon"]
        self.kb = max(self.kb, kb)
        return kb / 1024

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(OSError, KeyError):  # the process ended
                self.sample()

    def start(self) -> PeakAnon:
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_measured(command: list[str]) -> tuple[int, float, float, float]:
    """Run ``command``; return (exit status, peak RSS MiB, peak anonymous MiB, seconds)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO)
    peak = PeakAnon(process.pid).start()
    try:
        _, status, usage = os.wait4(process.pid, 0)
    except BaseException:
        process.kill()
        process.wait()
        raise
    finally:
        peak.stop()
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_maxrss / 1024, peak.mib, time.perf_counter() - start
