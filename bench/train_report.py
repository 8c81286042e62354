"""Table and learning-curve plot of bench/results/train.json (written by `python -m bench train`).

    python -m bench train_report [--json bench/results/train.json] [--png bench/results/train.png]

Per arm: mean ± sd over seeds of dense / hybrid nDCG@10 and R@100, and paired
randomization p-values (per-query nDCG@10, averaged over the arm's seeds) against the base
index and against the random sampler; training examples/s and wall time per run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("dense", "hybrid_rrf", "hybrid_linear")


def per_query(runs: list[dict[str, Any]], mode: str) -> dict[str, float]:
    """Per-query nDCG@10 averaged over seeds."""
    qids = sorted(runs[0]["metrics"][mode]["per_query"])
    return {q: float(np.mean([r["metrics"][mode]["per_query"][q] for r in runs])) for q in qids}


def p_value(a: dict[str, float], b: dict[str, float]) -> float:
    from hybrid.evaluation.compare import paired_randomization_test

    shared = sorted(set(a) & set(b))
    return paired_randomization_test(np.array([a[q] for q in shared]), np.array([b[q] for q in shared]))


def rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One summary row per arm (base first)."""
    base = [{"metrics": results["base"]["metrics"]}]
    arms: dict[str, list[dict[str, Any]]] = {"base": base}
    arms.update({arm: list(runs.values()) for arm, runs in results["runs"].items() if runs})
    random_runs = arms.get("random")
    out = []
    for arm, runs in arms.items():
        row: dict[str, Any] = {"arm": arm, "seeds": len(runs) if arm != "base" else 0}
        for mode in MODES:
            for metric in ("ndcg@10", "recall@100"):
                values = np.array([r["metrics"][mode][metric] for r in runs])
                row[f"{mode} {metric}"] = (float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0)
            mine = per_query(runs, mode)
            row[f"{mode} p_base"] = None if arm == "base" else p_value(per_query(base, mode), mine)
            row[f"{mode} p_random"] = (
                None if arm in ("base", "random") or not random_runs else p_value(per_query(random_runs, mode), mine)
            )
        if arm != "base":
            row["examples_per_s"] = float(np.mean([r["examples_per_s"] for r in runs]))
            row["wall_s"] = float(np.mean([r["wall_s"] for r in runs]))
        out.append(row)
    return out


def markdown(results: dict[str, Any]) -> str:
    """The table docs/benchmarks.md quotes."""
    head = (
        "| arm | seeds | dense nDCG@10 | p vs base | p vs random | dense R@100 | hybrid RRF nDCG@10 "
        "| hybrid linear nDCG@10 | p vs base | hybrid linear R@100 | ex/s | wall s |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )

    def ms(value: tuple[float, float], seeds: int) -> str:
        return f"{value[0]:.4f}" + (f" ± {value[1]:.4f}" if seeds > 1 else "")

    def p(value: float | None) -> str:
        return "-" if value is None else f"{value:.3g}"

    lines = []
    for r in rows(results):
        n = r["seeds"]
        lines.append(
            f"| {r['arm']} | {n or '-'} | {ms(r['dense ndcg@10'], n)} | {p(r['dense p_base'])} | "
            f"{p(r['dense p_random'])} | {ms(r['dense recall@100'], n)} | {ms(r['hybrid_rrf ndcg@10'], n)} | "
            f"{ms(r['hybrid_linear ndcg@10'], n)} | {p(r['hybrid_linear p_base'])} | "
            f"{ms(r['hybrid_linear recall@100'], n)} | "
            f"{r.get('examples_per_s', 0):.2f} | {r.get('wall_s', 0):.0f} |".replace("| 0.00 | 0 |", "| - | - |")
        )
    return head + "\n".join(lines) + "\n"


def print_table(results: dict[str, Any]) -> None:
    print(markdown(results))


def plot(results: dict[str, Any], path: Path) -> Path:
    """Dev nDCG@10 against training step, one line per arm and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for colour, (arm, runs) in zip(colours, results["runs"].items(), strict=False):
        for i, (seed, run) in enumerate(sorted(runs.items())):
            curve = sorted((d["step"], d["ndcg@10"]) for d in run["dev_curve"])
            ax.plot(*zip(*curve, strict=True), marker="o", color=colour, alpha=0.9, label=arm if i == 0 else None)
            del seed
    ax.set(xlabel="training step", ylabel="dev nDCG@10 (dense, 100 held-out train queries)", title="SciFact")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, default=RESULTS / "train.json")
    parser.add_argument("--png", type=Path, default=RESULTS / "train.png")
    args = parser.parse_args()
    results = json.loads(args.json.read_text())
    print_table(results)
    print(f"plot: {plot(results, args.png)}")
    return 0


def print_knobs(results: dict[str, Any]) -> None:
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
