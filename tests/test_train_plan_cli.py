"""``hybrid train`` tells its memory and time up front: --max-memory, --dry-run, the estimate."""

from __future__ import annotations

import json
from pathlib import Path

from hybrid.cli.app import app
from typer.testing import CliRunner

runner = CliRunner()


def _args(tmp_path: Path, tiny_model: Path, beir_small: Path, *extra: str) -> list[str]:
    store = ["--store", str(tmp_path / "store")]
    if not (tmp_path / "store").exists():
        result = runner.invoke(app, ["index", str(beir_small), "-i", "docs", "-m", str(tiny_model), "-q", *store])
        assert result.exit_code == 0, result.output
    labels = ["--queries", str(beir_small / "queries.jsonl"), "--qrels", str(beir_small / "qrels/test.tsv")]
    knobs = ["--batch-size", "2", "--negatives", "2", "--pool-depth", "8", "--passage-max-length", "32"]
    return ["train", "-i", "docs", *labels, *knobs, "--no-guard", "--no-refresh-at-end", *store, *extra]


def test_dry_run_plans_and_times_without_training(tmp_path: Path, tiny_model: Path, beir_small: Path) -> None:
    out = tmp_path / "run"
    args = _args(tmp_path, tiny_model, beir_small, "--out", str(out), "--steps", "3", "--max-memory", "2GiB")
    result = runner.invoke(app, [*args, "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("4 training queries (0 without a positive skipped), 3 steps")
    assert lines[1].startswith("memory: budget 2.0GiB, estimate ") and "unchunked (8 texts per micro-batch" in lines[1]
    assert lines[2].startswith("time: ") and "for 3 steps of 2 queries" in lines[2]
    pools = out / "dry-run" / "pools" / "pools-0000000.jsonl.gz"
    kept = f"pools mined for it are kept: pass --pools {pools} to reuse them"
    assert lines[3] == f"dry run: nothing trained, the index and checkpoints untouched; {kept}"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "dry-run/pools/pools-0000000.arrow",
        "dry-run/pools/pools-0000000.jsonl.gz",
        "dry-run/pools/pools-0000000.meta.json",
    ]
    info = runner.invoke(app, ["info", "-i", "docs", "--json", "--store", str(tmp_path / "store")])
    assert json.loads(info.stdout)["version"].endswith("v000001")  # the index as it was
    mined = pools.stat().st_mtime_ns
    assert runner.invoke(app, [*args, "--dry-run"]).exit_code == 0
    assert pools.stat().st_mtime_ns == mined  # a second dry run reuses them

    # the run itself: the plan, then at its first log step how long the rest will take
    config = tmp_path / "train.yaml"
    config.write_text("log_every: 1\n")
    result = runner.invoke(app, [*args, "--pools", str(pools), "--config", str(config), "-q"])
    assert result.exit_code == 0, result.output
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["plan"]["memory"]["chosen_by"] == "budget"
    steps = [r for r in log if "step" in r]
    assert "eta_s" in steps[0] and all("eta_s" not in r for r in steps[1:])
    assert "time: at step 1 the steps left were estimated at " in result.stdout


def test_memory_budgets_that_cannot_be(tmp_path: Path, tiny_model: Path, beir_small: Path) -> None:
    args = _args(tmp_path, tiny_model, beir_small, "--out", str(tmp_path / "run"), "--steps", "1", "--dry-run")
    result = runner.invoke(app, [*args, "--max-memory", "lots"])
    assert result.exit_code == 2 and "'lots' is not a memory size" in result.output

    result = runner.invoke(app, [*args, "--max-memory", "200MiB"])
    assert result.exit_code == 1
    err = result.stderr.strip()
    assert err.startswith("Error: --max-memory 200MiB is too small for one text per GradCache chunk at 32 tokens")
    assert "the smallest that works is --max-memory 1.1GiB" in err and len(err.splitlines()) == 1

    result = runner.invoke(app, [*args, "--max-memory", "1000TiB"])
    assert result.exit_code == 0, result.output
    first = result.stderr.splitlines()[0]
    assert first.startswith("Warning: --max-memory 1000.0TiB is more than this machine has (")
    assert first.endswith("GiB); training under " + first.split("(")[1].split(")")[0])


def test_the_plan_tells_held_out_dev_queries_from_queries_without_a_positive() -> None:
    """Pools mined before the guard carved its dev set still hold those queries: the plan
    says they are held out, not that they lack a positive."""
    from cli.train import describe_plan

    eff = {"effective_median": 9.0, "effective_p10": 1.5, "effective_p90": 88.0, "pool_median": 100.0}
    plan = {"queries": 728, "queries_without_positive": 0, "steps": 46, "epochs": 2.022, "effective_candidates": eff}
    assert describe_plan({**plan, "queries_held_out": 81}).startswith(
        "728 training queries (0 without a positive skipped, 81 held out for the guard's dev set), 46 steps"
    )
    assert describe_plan(plan).startswith("728 training queries (0 without a positive skipped), 46 steps")
