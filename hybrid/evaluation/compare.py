"""Compare eval reports: per-metric deltas and a paired significance test over queries."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hybrid.errors import ConfigError

PERMUTATIONS = 10_000


@dataclass(frozen=True)
class Comparison:
    """One metric of one report against the baseline (the first report)."""

    metric: str
    report: str
    value: float
    delta: float
    p_value: float | None  # None for the baseline or when no queries are shared
    queries: int


def load_report(path: Path) -> dict[str, Any]:
    """Read a ``hybrid eval --json`` report."""
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read eval report {path}: {exc}") from exc
    if "metrics" not in data or "per_query" not in data:
        raise ConfigError(f"{path} is not a hybrid eval report (no metrics/per_query)")
    return data


def paired_randomization_test(a: np.ndarray, b: np.ndarray, permutations: int = PERMUTATIONS, seed: int = 0) -> float:
    """Two-sided paired randomization (sign-flip) test of mean(b - a); returns the p-value.

    Smucker, Allan & Carterette (CIKM 2007) recommend it for IR metrics.
    """
    diff = b - a
    if diff.size == 0 or np.allclose(diff, 0):
        return 1.0
    observed = abs(diff.mean())
    rng = np.random.default_rng(seed)
    signs = rng.choice((-1.0, 1.0), size=(permutations, diff.size))
    means = np.abs((signs * diff).mean(axis=1))
    return float((np.count_nonzero(means >= observed - 1e-12) + 1) / (permutations + 1))


def compare(paths: list[Path]) -> list[Comparison]:
    """Compare reports; the first is the baseline. Metrics shared by all reports only."""
    if len(paths) < 2:
        raise ConfigError("--compare needs at least two eval reports")
    reports = [load_report(p) for p in paths]
    metrics = [m for m in reports[0]["metrics"] if all(m in r["metrics"] for r in reports[1:])]
    base = reports[0]
    out: list[Comparison] = []
    for metric in metrics:
        for path, report in zip(paths, reports, strict=True):
            value = float(report["metrics"][metric])
            delta = value - float(base["metrics"][metric])
            shared = sorted(
                q
                for q in base["per_query"]
                if metric in base["per_query"][q] and metric in report["per_query"].get(q, {})
            )
            p = None
            if report is not base and shared:
                a = np.array([base["per_query"][q][metric] for q in shared])
                b = np.array([report["per_query"][q][metric] for q in shared])
                p = paired_randomization_test(a, b)
            out.append(Comparison(metric, str(path), value, delta, p, len(shared)))
    return out
