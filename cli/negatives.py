"""``hybrid negatives``: look at what a sampler draws from a pool file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .common import console, err_console, handle_errors


@handle_errors
def negatives(
    pools: Annotated[Path, typer.Argument(help="Pool file from 'hybrid mine' (.jsonl.gz).")],
    sampler: Annotated[str, typer.Option("--sampler", help="simans, random, topk, percpos.")] = "simans",
    n: Annotated[int, typer.Option("--negatives", help="Negatives per query.")] = 3,
    depth: Annotated[int, typer.Option("--pool-depth", help="Top-k of the pool sampled from.")] = 100,
    a: Annotated[float, typer.Option("--a", help="SimANS a.")] = 0.5,
    b: Annotated[float, typer.Option("--b", help="SimANS b (peak at s+ + b).")] = 0.0,
    kernel: Annotated[str, typer.Option("--kernel", help="squared or absolute.")] = "squared",
    scale: Annotated[
        str,
        typer.Option(
            "--score-scale", help="Score multiplier before the kernel: auto (1/temperature if normalised, else 1)."
        ),
    ] = "auto",
    temperature: Annotated[
        float, typer.Option("--temperature", help="Training temperature, for --score-scale auto.")
    ] = 0.05,
    percpos: Annotated[float, typer.Option("--percpos", help="percpos threshold fraction.")] = 0.95,
    rounds: Annotated[int, typer.Option("--rounds", help="Samples per query.")] = 1,
    seed: Annotated[int, typer.Option("--seed")] = 13,
    plot: Annotated[Path | None, typer.Option("--plot", help="Save rank and gap histograms as PNG.")] = None,
    as_json: Annotated[Path | None, typer.Option("--json", help="Save the summary and raw draws as JSON.")] = None,
) -> None:
    """Distribution of sampled ranks and score gaps to the positive, for one sampler."""
    from typing import Any

    from hybrid.diagnostics import crowded_warning, plot_diagnostics, resolve_for_pools, sampler_diagnostics
    from hybrid.negatives import SamplerConfig

    options: dict[str, Any] = {
        "name": sampler,
        "n": n,
        "depth": depth,
        "a": a,
        "b": b,
        "kernel": kernel,
        "scale": scale,
        "percpos": percpos,
    }
    config = resolve_for_pools(pools, SamplerConfig(**options), temperature)  # validates the names
    diag = sampler_diagnostics(pools, config, seed, rounds)
    summary = diag.summary()
    warning = crowded_warning(diag.effective, config)
    if warning:
        err_console.print(f"Warning: {warning}", markup=False, highlight=False)
    table = Table(title=f"{sampler} on {pools.name}", show_header=False)
    for key, value in summary.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)
    if plot is not None:
        plot_diagnostics(diag, plot, f"{sampler} a={a} b={b} scale={config.scale} ({kernel}) on {pools.name}")
        console.print(f"plot: {plot}", markup=False, highlight=False)
    if as_json is not None:
        as_json.write_text(
            json.dumps(
                {
                    "sampler": config.__dict__,
                    "summary": summary,
                    "ranks": diag.ranks.tolist(),
                    "gaps": diag.gaps.tolist(),
                }
            )
        )
