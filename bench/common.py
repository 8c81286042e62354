"""Helpers shared by the benchmark scripts (not part of the library)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
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


def trec_eval(qrels: Path, run: dict[str, list[tuple[str, float]]], measures: list[str]) -> dict[str, float]:
    """Score a run with pyserini's trec_eval in a subprocess (local qrels, nothing downloaded)."""
    with tempfile.TemporaryDirectory() as tmp:
        run_file = Path(tmp) / "run.trec"
        with run_file.open("w") as fh:
            for qid, hits in run.items():
                for rank, (doc, score) in enumerate(hits, start=1):
                    fh.write(f"{qid} Q0 {doc} {rank} {score:.6f} hybrid\n")
        qrels_file = Path(tmp) / "qrels.trec"
        with qrels_file.open("w") as fh:
            for line in qrels.read_text().splitlines():
                parts = line.split()
                if len(parts) == 3 and parts[0] != "query-id":
                    fh.write(f"{parts[0]} 0 {parts[1]} {parts[2]}\n")
                elif len(parts) == 4:
                    fh.write(line + "\n")
        out: dict[str, float] = {}
        for measure in measures:
            cmd = [sys.executable, "-m", "pyserini.eval.trec_eval", "-c", "-m", measure, str(qrels_file), str(run_file)]
            text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            for line in text.splitlines():
                parts = line.split()
                if len(parts) == 3 and parts[1] == "all":
                    out[parts[0]] = float(parts[2])
        return out


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
