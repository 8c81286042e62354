"""Benchmark: what each training knob does to SimANS on SciFact, one knob at a time.

    python bench/train_knobs.py [--seed 1] [--knobs a=2,b=-2,...] [--out bench/results/train_knobs.json]

Builds the same base index and pools as bench/train.py (once), then trains the simans arm
with bench/train.py's budget except for one knob per run, and scores each on the test
queries like bench/train.py does. The unchanged budget (the "default" row) is trained too,
with the same seed, so every row differs from it in exactly one thing. One seed per knob:
read differences against the seed spread bench/train.py measures (about ±0.007 dense
nDCG@10 there), not as significant on their own. Runs already in the JSON are skipped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, machine, write_json
from bench.train import build_base, one_run, train_config

DEFAULTS = {
    "epochs": 2.0,
    "batch_size": 32,
    "negatives": 3,
    "lr": 5e-5,
    "a": 0.5,
    "b": 0.0,
    "score_scale": "auto",
    "depth": 100,
    "held_out": 100,
}
KNOBS = "default,score_scale=1,a=2,b=-2,depth=30,negatives=7,lr=1e-4,batch_size=64,epochs=4"


def variant(knob: str) -> dict[str, Any]:
    """The budget with one knob changed (``name=value``), or the default budget."""
    budget = dict(DEFAULTS)
    if knob == "default":
        return budget
    name, _, value = knob.partition("=")
    if name not in DEFAULTS or not value:
        raise SystemExit(f"unknown knob '{knob}'; use name=value with name one of {', '.join(DEFAULTS)}")
    budget[name] = type(DEFAULTS[name])(value) if name != "score_scale" else value
    return budget


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--knobs", default=KNOBS, help="comma-separated name=value (and 'default')")
    parser.add_argument("--device", default=None)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "train_knobs.json")
    args = parser.parse_args()

    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    work = Path(tempfile.mkdtemp(prefix="hybrid-bench-knobs-"))
    setup = build_base(work, DEFAULTS["held_out"])
    results.setdefault("machine", machine())
    results.update(seed=args.seed, defaults=DEFAULTS, base=setup["base"])
    results.setdefault("runs", {})
    for knob in args.knobs.split(","):
        if knob in results["runs"]:
            continue
        budget = variant(knob)
        namespace = argparse.Namespace(**budget, device=args.device, precision=args.precision)
        config = train_config(namespace, setup, "simans", args.seed, work / f"run-{len(results['runs'])}")
        run = one_run(work, setup, config)
        results["runs"][knob] = {"budget": budget, **run}
        write_json(args.out, results)
        print(json.dumps({knob: {m: v["ndcg@10"] for m, v in run["metrics"].items()}}), flush=True)
    print_table(results)
    shutil.rmtree(work, ignore_errors=True)
    return 0


def print_table(results: dict[str, Any]) -> None:
    """Markdown: each knob's test nDCG@10 and its difference from the default row."""
    default = results["runs"].get("default")
    print("| knob | dense nDCG@10 | Δ dense | hybrid RRF | hybrid linear | dense R@100 | ex/s | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    base = results["base"]["metrics"]
    print(
        f"| base index | {base['dense']['ndcg@10']:.4f} | | {base['hybrid_rrf']['ndcg@10']:.4f} "
        f"| {base['hybrid_linear']['ndcg@10']:.4f} | {base['dense']['recall@100']:.4f} | | |"
    )
    for knob, run in results["runs"].items():
        m = run["metrics"]
        delta = ""
        if default is not None and knob != "default":
            delta = f"{m['dense']['ndcg@10'] - default['metrics']['dense']['ndcg@10']:+.4f}"
        print(
            f"| {knob} | {m['dense']['ndcg@10']:.4f} | {delta} | {m['hybrid_rrf']['ndcg@10']:.4f} "
            f"| {m['hybrid_linear']['ndcg@10']:.4f} | {m['dense']['recall@100']:.4f} "
            f"| {run['examples_per_s']:.2f} | {run['wall_s']:.0f} |"
        )


if __name__ == "__main__":
    sys.exit(main())
