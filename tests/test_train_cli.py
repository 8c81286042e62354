"""mine -> negatives -> train through the CLI on the embedded store."""

from __future__ import annotations

import json
from pathlib import Path

from hybrid.cli.app import app
from typer.testing import CliRunner

runner = CliRunner()


def test_mine_inspect_train_resume(tmp_path: Path, tiny_model: Path, beir_small: Path) -> None:
    store = ["--store", str(tmp_path / "store")]
    result = runner.invoke(app, ["index", str(beir_small), "-i", "docs", "-m", str(tiny_model), "-q", *store])
    assert result.exit_code == 0, result.output
    pools = tmp_path / "pools.jsonl.gz"
    labels = ["--queries", str(beir_small / "queries.jsonl"), "--qrels", str(beir_small / "qrels/test.tsv")]
    result = runner.invoke(
        app, ["mine", "-i", "docs", *labels, "--out", str(pools), "--bm25-depth", "5", "--knn-depth", "5", "-q", *store]
    )
    assert result.exit_code == 0, result.output
    assert "queries" in result.stdout and pools.is_file()

    plot = tmp_path / "simans.png"
    result = runner.invoke(
        app,
        [
            "negatives",
            str(pools),
            "--negatives",
            "3",
            "--a",
            "2",
            "--rounds",
            "5",
            "--plot",
            str(plot),
            "--json",
            str(tmp_path / "d.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    diag = json.loads((tmp_path / "d.json").read_text())
    assert diag["summary"]["negatives"] == len(diag["ranks"]) > 0 and min(diag["ranks"]) >= 1

    config = tmp_path / "train.yaml"
    config.write_text(
        f"index: docs\nqueries: {beir_small / 'queries.jsonl'}\nqrels: {beir_small / 'qrels/test.tsv'}\n"
        f"model: {tiny_model}\nsteps: 50\nbatch_size: 2\npassage_max_length: 32\n"
        "sampler:\n  name: simans\n  n: 2\n  depth: 8\n"
    )
    run = tmp_path / "run"
    args = [
        "train",
        "--config",
        str(config),
        "--out",
        str(run),
        "--pools",
        str(pools),
        "--steps",
        "2",
        "--no-refresh-at-end",
        "--save-every",
        "1",
        "-q",
        *store,
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "final checkpoint" in result.stdout and (run / "checkpoint-0000002" / "config.json").is_file()
    saved = json.loads((run / "checkpoint-0000002" / "train_config.json").read_text())
    assert (saved["steps"], saved["sampler"]["n"], saved["pools"]) == (2, 2, str(pools))

    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert (
        result.stderr.strip()
        == f"Error: {run} already has checkpoints; pass --resume to continue, or choose another --out"
    )
    resume = [
        "train",
        "--config",
        str(config),
        "--out",
        str(run),
        "--pools",
        str(pools),
        "--steps",
        "3",
        "--no-refresh-at-end",
        "--resume",
        "-q",
        *store,
    ]
    result = runner.invoke(app, resume)  # --steps 3 instead of 2: not the same run any more
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"Error: --resume with changed options (save_every, steps) would not continue the run in {run}; "
        "pass the same options, or --allow-config-change to go on with the new ones"
    )
    result = runner.invoke(app, [*resume, "--allow-config-change"])
    assert result.exit_code == 0, result.output
    assert (
        "dev nDCG" not in result.stdout
        and "4 training queries (0 without a positive skipped), 3 steps" in result.stdout
    )
    assert (run / "checkpoint-0000003").is_dir()
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "step" in r][-1] == 3

    # a checkpoint is a model everywhere, but not for an index another model embedded
    search = ["search", "ocean tides", "-i", "docs", "--mode", "dense", "--json", *store]
    result = runner.invoke(app, [*search, "-m", str(run / "checkpoint-0000003")])
    assert result.exit_code == 1
    err = result.stderr.strip()
    assert err.startswith("Error: index 'docs' was embedded by ") and "vectors of two models do not mix" in err
    assert len(err.splitlines()) == 1
    result = runner.invoke(app, [*search, "-m", str(tiny_model)])  # the index's own model, named explicitly
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 10
