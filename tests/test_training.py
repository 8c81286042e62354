"""Training end to end with a tiny model: refresh, swap safety, exact resume, config files."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hybrid.errors import ConfigError
from hybrid.indexing import IndexJob, run_index
from hybrid.negatives import SamplerConfig
from hybrid.training.config import TrainConfig, load_config_file, merge
from hybrid.training.trainer import train
from hybrid.types import Document


def _config(name: str, beir_small: Path, out: Path, tiny_model: Path, **kw: Any) -> TrainConfig:
    values: dict[str, Any] = {
        "index": name,
        "queries": beir_small / "queries.jsonl",
        "qrels": beir_small / "qrels/test.tsv",
        "out": out,
        "model": str(tiny_model),
        "sampler": SamplerConfig(n=2, depth=10),
        "steps": 4,
        "batch_size": 2,
        "lr": 1e-3,
        "log_every": 1,
        "save_every": 0,
        "bm25_depth": 5,
        "knn_depth": 5,
        "passage_max_length": 32,
        "refresh_at_end": False,
        "guard": False,  # these tests are about the loop's mechanics; tests/test_guard.py tests the guard
    }
    values.update(kw)
    return TrainConfig(**values)


def _losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "step" in r}


def test_train_with_refresh_end_to_end(
    backend_and_name: tuple[Any, str], tiny_encoder: Any, tiny_model: Path, beir_small: Path, tmp_path: Path
) -> None:
    from hybrid.search import SearchConfig, Searcher

    backend, name = backend_and_name
    run_index(IndexJob(corpus=beir_small, index=name), backend, tiny_encoder)
    config = _config(
        name,
        beir_small,
        tmp_path / "run",
        tiny_model,
        refresh_every=2,
        refresh_at_end=True,
        dev_queries=beir_small / "queries.jsonl",
        dev_qrels=beir_small / "qrels/test.tsv",
    )
    result = train(config, backend)
    assert len(result.losses) == 4 and all(math.isfinite(x) for x in result.losses)
    assert [r["step"] for r in result.refreshes] == [2, 4]
    assert [r["version"][-7:] for r in result.refreshes] == ["v000002", "v000003"]
    assert all(r["documents"] == 12 and r["dev_ndcg@10"] is not None for r in result.refreshes)
    final = tmp_path / "run" / "checkpoint-0000004"
    assert result.final == final and (final / "model.safetensors").is_file()
    assert (final / "hybrid_encoder.json").is_file() and (final / "train_config.json").is_file()
    info = backend.info(name)
    kept = tmp_path / "run" / "models" / "checkpoint-0000004"  # never pruned: the index names it
    assert (info.version[-7:], info.model, info.count) == ("v000003", str(kept), 12)
    # re-embedded with the index's passage length (64, from the model), not the training one (32)
    assert info.recipe is not None and info.recipe["passage_max_length"] == 64
    assert json.loads((final / "hybrid_encoder.json").read_text())["passage_max_length"] == 64
    assert [d["step"] for d in result.dev] == [0, 2, 4]  # step 0: the same pipeline before training
    assert (tmp_path / "run" / "pools" / "pools-0000002.jsonl.gz").is_file()  # the last refresh does not re-mine
    assert not (tmp_path / "run" / "pools" / "pools-0000004.jsonl.gz").exists()
    assert result.best is not None and (result.best / "best.json").is_file()
    # the index and a search accept the checkpoint as the model
    hits = Searcher(backend, name).search(["ocean tides"], SearchConfig(mode="dense", k=3))[0]
    assert len(hits) == 3


def test_searches_never_fail_during_swap(
    backend_and_name: tuple[Any, str], tiny_encoder: Any, tiny_model: Path, beir_small: Path
) -> None:
    from hybrid.search import SearchConfig, Searcher
    from hybrid.training.refresh import reembed

    backend, name = backend_and_name
    run_index(IndexJob(corpus=beir_small, index=name), backend, tiny_encoder)
    searcher = Searcher(backend, name, tiny_encoder)
    stop = threading.Event()
    errors: list[BaseException] = []
    counts = {"searches": 0}

    def loop() -> None:
        while not stop.is_set():
            try:
                for mode in ("bm25", "dense"):
                    hits = searcher.search(["honey bees", "ocean tides"], SearchConfig(mode=mode, k=3))  # type: ignore[arg-type]
                    assert all(len(h) == 3 for h in hits) if mode == "dense" else all(hits)
                    counts["searches"] += 1
            except BaseException as exc:
                errors.append(exc)
                return

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        for _ in range(3):
            reembed(backend, name, tiny_encoder, batch_size=4)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not errors, errors[0]
    assert counts["searches"] > 3
    assert backend.info(name).version.endswith("v000004")


def test_resume_reproduces_the_uninterrupted_run(
    embedded_backend: Any, tiny_encoder: Any, tiny_model: Path, beir_small: Path, tmp_path: Path
) -> None:
    run_index(IndexJob(corpus=beir_small, index="idx"), embedded_backend, tiny_encoder)
    steps = {"steps": 6, "save_every": 3}
    straight = train(_config("idx", beir_small, tmp_path / "a", tiny_model, **steps), embedded_backend)

    class Crash(Exception):
        pass

    def crash_at_5(p: Any) -> None:
        if p.step == 5:
            raise Crash

    config = _config(
        "idx", beir_small, tmp_path / "b", tiny_model, pools=tmp_path / "a/pools/pools-0000000.jsonl.gz", **steps
    )
    with pytest.raises(Crash):
        train(config, embedded_backend, progress=crash_at_5)
    with pytest.raises(ConfigError, match="already has checkpoints; pass --resume"):
        train(config, embedded_backend)
    resumed = train(config, embedded_backend, resume=True)
    assert len(resumed.losses) == 3  # steps 4..6 only
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert sorted(b) == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([b[s] for s in range(1, 7)], [a[s] for s in range(1, 7)], rtol=1e-5, atol=1e-6)
    # and the resumed process's own losses are the uninterrupted ones (not read back from a log)
    assert resumed.losses == pytest.approx(straight.losses[3:], abs=1e-6)


def test_separate_towers_save_a_query_tower(
    embedded_backend: Any, tiny_encoder: Any, tiny_model: Path, beir_small: Path, tmp_path: Path
) -> None:
    from hybrid.encoder import Encoder, EncoderConfig
    from hybrid.onnx_encoder import OnnxQueryEncoder

    run_index(IndexJob(corpus=beir_small, index="idx"), embedded_backend, tiny_encoder)
    result = train(_config("idx", beir_small, tmp_path / "run", tiny_model, shared=False, steps=2), embedded_backend)
    assert (result.final / "query_encoder" / "model.safetensors").is_file()
    torch_q = Encoder(EncoderConfig(model=str(result.final))).encode_queries(["honey"])
    onnx_q = OnnxQueryEncoder(str(result.final)).encode_queries(["honey"])
    np.testing.assert_allclose(torch_q, onnx_q, atol=1e-5)


def test_config_files_and_overrides(tmp_path: Path) -> None:
    yaml_file = tmp_path / "train.yaml"
    yaml_file.write_text(
        "index: docs\nqueries: q.jsonl\nqrels: r.tsv\nout: run\nsteps: 50\n"
        "sampler:\n  name: simans\n  a: 0.7\n  b: -1.0\n"
    )
    config = merge(load_config_file(yaml_file), {"steps": 20, "sampler_n": 7, "lr": None})
    assert (config.steps, config.sampler.a, config.sampler.b, config.sampler.n) == (20, 0.7, -1.0, 7)
    assert config.out == Path("run") and config.lr == 1e-4
    toml_file = tmp_path / "train.toml"
    toml_file.write_text(
        'index = "docs"\nqueries = "q.jsonl"\nqrels = "r.tsv"\nout = "run"\n[sampler]\nname = "topk"\n'
    )
    assert merge(load_config_file(toml_file), {}).sampler.name == "topk"
    with pytest.raises(ConfigError, match="unknown training option\\(s\\): stepz"):
        merge({"index": "d", "queries": "q", "qrels": "r", "out": "o", "stepz": 3}, {})
    with pytest.raises(ConfigError, match="train needs --qrels, --answers or --pools"):
        merge({"index": "d", "queries": "q", "out": "o"}, {})
    # named as the user names them, not as Python's TypeError would ("__init__() missing ...")
    with pytest.raises(ConfigError, match=r"^missing training option\(s\): --index, --out \(a flag"):
        merge({"queries": "q", "qrels": "r"}, {})


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("keep_checkpoints", 0, "keep_checkpoints must be a whole number of at least 1, got 0"),
        ("log_every", 0, "log_every must be a whole number of at least 1, got 0"),
        ("save_every", -5, "save_every (--save-every) must be a whole number of at least 0, got -5"),
        ("save_every", "5", "save_every (--save-every) must be a whole number of at least 0, got '5'"),
        ("bm25_depth", True, "bm25_depth must be a whole number of at least 1, got True"),
        ("seed", -1, "seed (--seed) must be a whole number of at least 0"),
        ("lr", float("nan"), "lr (--lr) must be a finite number, got nan"),
        ("temperature", 0, "temperature (--temperature) must be above 0"),
        ("max_grad_norm", float("inf"), "max_grad_norm must be a finite number"),
        ("weight_decay", -0.1, "weight_decay must be at least 0"),
        ("passage_max_length", 0, "passage_max_length (--passage-max-length) must be a whole number of at least 1"),
        ("grades", "graded", "unknown --grades 'graded'; choose ignore or weight"),
    ],
)
def test_every_training_number_is_range_checked(option: str, value: Any, message: str) -> None:
    """From a config file or a flag alike: keep_checkpoints 0 would delete every checkpoint,
    log_every 0 divides by zero, a negative save_every is nonsense."""
    base = {"index": "d", "queries": "q", "qrels": "r", "out": "o"}
    with pytest.raises(ConfigError) as raised:
        merge({**base, option: value}, {})
    assert str(raised.value) == message or str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


def test_training_range_errors_are_one_line_from_flags(tmp_path: Path) -> None:
    import subprocess
    import sys

    args = ["train", "-i", "x", "--queries", "q", "--qrels", "r", "--out", "o", "--store", str(tmp_path / "s")]
    done = subprocess.run(
        [sys.executable, "-m", "hybrid.cli", *args, "--save-every", "-5"], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 1
    assert done.stderr.strip() == "Error: save_every (--save-every) must be a whole number of at least 0, got -5"


def test_checkpoints_load_in_sentence_transformers(
    embedded_backend: Any, tiny_encoder: Any, tiny_model: Path, beir_small: Path, tmp_path: Path
) -> None:
    """A trained checkpoint is a sentence-transformers model: same vectors as hybrid's encoder."""
    from sentence_transformers import SentenceTransformer

    from hybrid.encoder import Encoder, EncoderConfig

    run_index(IndexJob(corpus=beir_small, index="idx"), embedded_backend, tiny_encoder)
    result = train(_config("idx", beir_small, tmp_path / "run", tiny_model, steps=2), embedded_backend)
    texts = ["how do solar panels make electricity", "bees " * 200]  # the second is truncated
    mine = Encoder(EncoderConfig(model=str(result.final)))
    theirs = SentenceTransformer(str(result.final), device="cpu", local_files_only=True)
    assert theirs.max_seq_length == mine.settings.passage_max_length
    ours = mine.encode_passages([Document(id=str(i), text=t) for i, t in enumerate(texts)])
    np.testing.assert_allclose(theirs.encode(texts, convert_to_numpy=True), ours, atol=1e-5)
    assert np.allclose(np.linalg.norm(theirs.encode(texts), axis=1), 1.0, atol=1e-5)


def test_train_with_gradcache(
    embedded_backend: Any, tiny_encoder: Any, tiny_model: Path, beir_small: Path, tmp_path: Path
) -> None:
    run_index(IndexJob(corpus=beir_small, index="idx"), embedded_backend, tiny_encoder)
    result = train(
        _config("idx", beir_small, tmp_path / "run", tiny_model, steps=2, grad_cache_chunk=3), embedded_backend
    )
    assert result.steps == 2 and all(math.isfinite(x) for x in result.losses)
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["grad_cache_chunk"] == 3


def test_a_checkpoint_save_killed_midway_is_not_resumed_from(tmp_path: Path) -> None:
    """A kill during a save leaves ``checkpoint-N.tmp`` with a truncated state: resuming takes
    the newest complete checkpoint, and a damaged state is one clear error, not EOFError."""
    import torch

    from hybrid.errors import CheckpointError
    from hybrid.training.checkpoint import STATE_FILE, latest_checkpoint, load_state

    good = tmp_path / "checkpoint-0000002"
    good.mkdir()
    torch.save({"step": 2}, good / STATE_FILE)
    partial = tmp_path / "checkpoint-0000004.tmp"
    partial.mkdir()
    (partial / STATE_FILE).write_bytes((good / STATE_FILE).read_bytes()[:40])
    assert latest_checkpoint(tmp_path) == good
    assert load_state(good)["step"] == 2
    damaged = tmp_path / "checkpoint-0000006"
    damaged.mkdir()
    (damaged / STATE_FILE).write_bytes((good / STATE_FILE).read_bytes()[:40])
    with pytest.raises(CheckpointError, match="delete checkpoint-0000006 to resume"):
        load_state(damaged)


def _write_pools(path: Path, rows: list[dict[str, Any]]) -> Path:
    import gzip

    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return path


def test_pool_data_reads_a_mapped_table_built_once(tmp_path: Path) -> None:
    """Training reads pools from an Arrow table built beside the pool file: rows hold what the
    jsonl held (an answer-labelled query takes its best answer-holding candidate as positive;
    flagged candidates are never negatives), draws are a function of (seed, step), and the
    table is rebuilt when the pool file changes, never otherwise."""
    import os

    from hybrid.training.data import PoolData, table_path

    cands = [
        ["d1", 0.9, "both", False],
        ["d2", 0.8, "bm25", True],
        ["d3", 0.7, "knn", False],
        ["d4", 0.1, "knn", False],
    ]
    rows = [
        {"qid": "q1", "query": "first", "positives": [["p1", 0.95]], "candidates": cands},
        {"qid": "q2", "query": "no positive", "positives": [], "candidates": [["d1", 0.5, "bm25", False]]},
        {"qid": "q3", "query": "answers", "positives": [], "candidates": cands},
    ]
    pools = _write_pools(tmp_path / "pools.jsonl.gz", rows)
    sampler = SamplerConfig(name="random", n=2, depth=10)
    data = PoolData(pools, sampler, seed=3)
    assert (len(data), data.skipped, data.held_out) == (2, 1, 0)
    # the guard's dev queries are held out, not counted as lacking a positive
    held = PoolData(pools, sampler, seed=3, exclude=frozenset({"q3", "q2", "q9"}))
    assert (len(held), held.skipped, held.held_out) == (1, 1, 1)
    q1, q3 = data.entry(0), data.entry(1)
    assert (q1.qid, q1.query, q1.positives, list(q1.ids[:])) == (
        "q1",
        "first",
        (("p1", 0.95),),
        ["d1", "d2", "d3", "d4"],
    )
    assert q1.scores.tolist() == [0.9, 0.8, 0.7, 0.1] and q1.eligible.tolist() == [True, False, True, True]
    assert q1.not_negative == {"p1", "d2"}
    assert (q3.positives, list(q3.ids[:])) == ((("d2", 0.8),), ["d1", "d3", "d4"])  # DPR's convention
    assert q3.not_negative == {"d2"}
    first = [data.batch(step, 2) for step in range(5)]
    for batch in first:
        for ex in batch:
            assert ex.positive not in ex.negatives and "d2" not in ex.negatives and len(ex.negatives) == 2
    built = os.stat(table_path(pools)).st_mtime_ns
    again = PoolData(pools, sampler, seed=3)
    assert [again.batch(step, 2) for step in range(5)] == first
    assert os.stat(table_path(pools)).st_mtime_ns == built  # reused

    import socket

    host = socket.gethostname()
    stale = table_path(pools).with_name(f"{table_path(pools).name}.{host}.999999999.tmp")  # a killed build's
    stale.write_bytes(b"partial")
    _write_pools(pools, rows[:1])
    assert len(PoolData(pools, sampler, seed=3)) == 1  # the pool file changed: the table follows
    assert not stale.exists()
    table_path(pools).write_bytes(b"not arrow")
    assert len(PoolData(pools, sampler, seed=3)) == 1  # a damaged table is built again


def test_models_folder_keeps_only_what_the_index_or_a_kept_checkpoint_names(
    embedded_backend: Any, tiny_encoder: Any, tiny_model: Path, beir_small: Path, tmp_path: Path
) -> None:
    """Every refresh kept a full model copy under OUT/models that nothing removed."""
    run_index(IndexJob(corpus=beir_small, index="idx"), embedded_backend, tiny_encoder)
    config = _config(
        "idx", beir_small, tmp_path / "run", tiny_model, refresh_every=1, refresh_at_end=True, keep_checkpoints=1
    )
    train(config, embedded_backend)
    models = sorted(p.name for p in (tmp_path / "run" / "models").iterdir())
    assert models == ["checkpoint-0000004"]  # the current version's model, which is also the kept checkpoint
    recipe = embedded_backend.info("idx").recipe
    assert recipe is not None and recipe["model_path"].endswith("models/checkpoint-0000004")
