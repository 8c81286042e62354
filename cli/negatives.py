"""``hybrid negatives``: look at what a sampler draws from a pool file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from .common import Params, console, err_console, handle_errors, option_group

if TYPE_CHECKING:
    from hybrid.diagnostics import Diagnostics
    from hybrid.negatives import SamplerConfig

Opt = typer.Option

PoolsArg = Annotated[Path, typer.Argument(help="Pool file from 'hybrid mine' (.jsonl.gz).")]
TemperatureOpt = Annotated[float, Opt("--temperature", help="Training temperature, for --score-scale auto.")]
RoundsOpt = Annotated[int, Opt("--rounds", help="Samples per query.")]
SeedOpt = Annotated[int, Opt("--seed")]
PlotOpt = Annotated[Path | None, Opt("--plot", help="Save rank and gap histograms as PNG.")]
JsonOpt = Annotated[Path | None, Opt("--json", help="Save the summary and raw draws as JSON.")]

# The sampler to look at: the options that are SamplerConfig fields, named by field.
_SAMPLER: Params = [
    ("name", Annotated[str, Opt("--sampler", help="simans, random, topk, percpos.")], "simans"),
    ("n", Annotated[int, Opt("--negatives", help="Negatives per query.")], 3),
    ("depth", Annotated[int, Opt("--pool-depth", help="Top-k of the pool sampled from.")], 100),
    ("a", Annotated[float, Opt("--a", help="SimANS a.")], 0.5),
    ("b", Annotated[float, Opt("--b", help="SimANS b (peak at s+ + b).")], 0.0),
    ("kernel", Annotated[str, Opt("--kernel", help="squared or absolute.")], "squared"),
    (
        "scale",
        Annotated[
            str,
            Opt(
                "--score-scale", help="Score multiplier before the kernel: auto (1/temperature if normalised, else 1)."
            ),
        ],
        "auto",
    ),
    ("percpos", Annotated[float, Opt("--percpos", help="percpos threshold fraction.")], 0.95),
]


@handle_errors
@option_group(_SAMPLER, "options", dict)
def negatives(
    pools: PoolsArg,
    options: dict[str, Any],
    temperature: TemperatureOpt = 0.05,
    rounds: RoundsOpt = 1,
    seed: SeedOpt = 13,
    plot: PlotOpt = None,
    as_json: JsonOpt = None,
) -> None:
    """Distribution of sampled ranks and score gaps to the positive, for one sampler."""
    from hybrid.diagnostics import crowded_warning, plot_diagnostics, resolve_for_pools, sampler_diagnostics
    from hybrid.negatives import SamplerConfig

    sampler = SamplerConfig(**options)  # checks the names
    config = resolve_for_pools(pools, sampler, temperature)
    diag = sampler_diagnostics(pools, config, seed, rounds)
    summary = diag.summary()
    warning = crowded_warning(diag.effective, config)
    if warning:
        err_console.print(f"Warning: {warning}", markup=False, highlight=False)
    table = Table(title=f"{sampler.name} on {pools.name}", show_header=False)
    for key, value in summary.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)
    if plot is not None:
        title = f"{sampler.name} a={sampler.a} b={sampler.b} scale={config.scale} ({sampler.kernel}) on {pools.name}"
        plot_diagnostics(diag, plot, title)
        console.print(f"plot: {plot}", markup=False, highlight=False)
    if as_json is not None:
        _save(as_json, config, summary, diag)


def _save(path: Path, config: SamplerConfig, summary: dict[str, Any], diag: Diagnostics) -> None:
    """The resolved sampler, the summary and every draw's rank and gap, as JSON."""
    draws = {"ranks": diag.ranks.tolist(), "gaps": diag.gaps.tolist()}
    path.write_text(json.dumps({"sampler": config.__dict__, "summary": summary, **draws}))
