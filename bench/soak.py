"""Soak test: many real `hybrid` processes on the embedded store, counting crashes.

    python -m bench soak [--runs 300] [--out bench/results/soak.json]

Builds a small embedded index (the BEIR-style test fixture, the shipped model), then runs
the CLI over and over as separate processes, cycling through: `search` (bm25, dense,
hybrid), `eval`, `info`, and every tenth round `index --recreate` (a new version while
nothing else runs). A run counts as a crash when the process dies by a signal, exits with
a status other than the one expected, prints a Python traceback, or leaves a JVM crash log
(hs_err_pid*.log). Prints a table and writes JSON; exits 1 when anything crashed. CI runs
a short version (`--runs 12`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, write_json

FIXTURE = REPO / "tests" / "fixtures" / "beir-small"
HYBRID = [sys.executable, "-m", "hybrid.cli"]


def commands(store: Path, round_: int) -> list[tuple[str, list[str]]]:
    where = ["--store", str(store), "-i", "soak"]
    modes = ("bm25", "dense", "hybrid")
    out: list[tuple[str, list[str]]] = [
        ("search", ["search", "ocean tides and the moon", *where, "--mode", modes[round_ % 3], "--json"]),
        ("info", ["info", *where, "--json"]),
        (
            "eval",
            ["eval", *where, "--queries", str(FIXTURE / "queries.jsonl"), "--qrels", str(FIXTURE / "qrels/test.tsv")],
        ),
    ]
    if round_ % 10 == 9:
        out.append(("index --recreate", ["index", str(FIXTURE), *where, "--recreate", "-q"]))
    return out


def one(args: list[str], cwd: Path) -> dict[str, Any]:
    start = time.perf_counter()
    done = subprocess.run([*HYBRID, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    crash_logs = sorted(p.name for p in cwd.glob("hs_err_pid*.log"))
    for log in cwd.glob("hs_err_pid*.log"):
        log.rename(log.with_suffix(".seen"))
    reasons = []
    if done.returncode < 0:
        reasons.append(f"killed by signal {-done.returncode}")
    elif done.returncode != 0:
        reasons.append(f"exit {done.returncode}: {done.stderr.strip()[-300:]}")
    if "Traceback (most recent call last)" in done.stderr:
        reasons.append("traceback")
    if crash_logs:
        reasons.append(f"JVM crash log {crash_logs}")
    return {"seconds": time.perf_counter() - start, "crash": "; ".join(reasons) or None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=300, help="processes to run in all (about)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "soak.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hybrid-soak-"))
    store = work / "store"
    index = [*HYBRID, "index", str(FIXTURE), "--store", str(store), "-i", "soak", "-q"]
    setup = subprocess.run(index, cwd=work, stdout=subprocess.DEVNULL)
    if setup.returncode != 0:
        print("could not build the soak index", file=sys.stderr)
        return 1
    runs: Counter[str] = Counter()
    seconds: dict[str, float] = {}
    crashes: list[dict[str, Any]] = []
    round_ = 0
    while sum(runs.values()) < args.runs:
        for name, cmd in commands(store, round_):
            result = one(cmd, work)
            runs[name] += 1
            seconds[name] = seconds.get(name, 0.0) + result["seconds"]
            if result["crash"]:
                crashes.append({"command": name, "round": round_, "why": result["crash"]})
        round_ += 1
    report = {
        "runs": dict(runs),
        "total_runs": sum(runs.values()),
        "crashes": len(crashes),
        "crash_details": crashes[:20],
        "mean_seconds": {k: round(seconds[k] / runs[k], 2) for k in runs},
    }
    write_json(args.out, report)
    print("| command | runs | mean s |\n|---|---|---|")
    for name in runs:
        print(f"| {name} | {runs[name]} | {report['mean_seconds'][name]} |")
    print(f"crashes: {len(crashes)} in {sum(runs.values())} runs")
    for crash in crashes[:5]:
        print(f"  {crash}")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
