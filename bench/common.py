"""Helpers shared by the benchmark scripts (not part of the library)."""

from __future__ import annotations

import json
import platform
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
    """Score a run with trec_eval from pyserini's Anserini jar (local files, Java 21+)."""
    from hybrid.corpus import read_qrels
    from hybrid.evaluation.trec_eval import trec_eval as run_trec_eval
    from hybrid.evaluation.trec_eval import write_trec_qrels

    with tempfile.TemporaryDirectory() as tmp:
        run_file = Path(tmp) / "run.trec"
        with run_file.open("w") as fh:
            for qid, hits in run.items():
                for rank, (doc, score) in enumerate(hits, start=1):
                    fh.write(f"{qid} Q0 {doc} {rank} {score:.6f} hybrid\n")
        qrels_file = write_trec_qrels(read_qrels(qrels), Path(tmp) / "qrels.trec")
        return run_trec_eval(qrels_file, run_file, measures)["all"]


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
