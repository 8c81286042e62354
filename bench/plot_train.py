"""Plot bench/results/train.json (from bench/train.py) as bench/results/train.png."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads((RESULTS / "train.json").read_text())
    arms = ["base", *data["runs"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=False)
    for ax, mode in zip(axes, ("dense", "hybrid"), strict=True):
        means, stds = [], []
        for arm in arms:
            if arm == "base":
                values = np.array([data["base"]["metrics"][mode]["ndcg@10"]])
            else:
                values = np.array([r["metrics"][mode]["ndcg@10"] for r in data["runs"][arm]])
            means.append(values.mean())
            stds.append(values.std(ddof=1) if values.size > 1 else 0.0)
        colors = ["#999999", *["#3b6ea5"] * (len(arms) - 1)]
        ax.bar(arms, means, yerr=stds, capsize=4, color=colors)
        low = min(means) - 0.02
        ax.set_ylim(low, max(means) + 0.015)
        ax.set_title(f"{mode}: SciFact test nDCG@10 (mean ± std, {data['budget']['seeds']} seeds)")
        ax.tick_params(axis="x", rotation=20)
    budget = data["budget"]
    fig.suptitle(
        f"all-MiniLM-L6-v2, {budget['steps']} steps x {budget['batch_size']} queries x "
        f"{budget['negatives']} negatives, lr {budget['lr']}"
    )
    fig.tight_layout()
    fig.savefig(RESULTS / "train.png", dpi=110)
    print(RESULTS / "train.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
