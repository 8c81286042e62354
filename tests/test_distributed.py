"""Data-parallel training: two processes (gloo, CPU) take the same steps as one process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hybrid.encoder import Encoder, EncoderConfig
from hybrid.indexing import IndexJob, run_index
from hybrid.mining import MineJob, run_mine


@pytest.fixture
def no_dropout_model(tiny_model: Path, tmp_path: Path) -> Path:
    """The tiny BERT without dropout: then one process and two compute the very same function."""
    model = shutil.copytree(tiny_model, tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (model / "config.json").write_text(json.dumps(config))
    return model


def _train(
    store: Path, beir_small: Path, pools: Path, out: Path, extra: list[str], refresh: bool = False
) -> dict[str, Any]:
    args = ["train", "-i", "idx", "--store", str(store), "--queries", str(beir_small / "queries.jsonl")]
    args += ["--qrels", str(beir_small / "qrels/test.tsv"), "--pools", str(pools), "--out", str(out)]
    args += ["--steps", "3", "--batch-size", "5", "--negatives", "2", "--pool-depth", "10", "--lr", "1e-3"]
    args += ["--refresh-at-end" if refresh else "--no-refresh-at-end", "--save-every", "0", "-q", *extra]
    done = subprocess.run([sys.executable, "-m", "hybrid.cli", *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OMP_NUM_THREADS" not in done.stdout + done.stderr  # no torchrun banner: hybrid sets the threads
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    return {"loss": steps[-1]["loss"], "plan": next(r["plan"] for r in log if "plan" in r), "final": out}


def _weights(checkpoint: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(checkpoint / "model.safetensors"))


def _indexed_and_mined(model: Path, beir_small: Path, tmp_path: Path) -> tuple[Path, Path]:
    from hybrid.backends.embedded import EmbeddedBackend

    store = tmp_path / "store"
    backend = EmbeddedBackend(store)
    encoder = Encoder(EncoderConfig(model=str(model), batch_size=8))
    run_index(IndexJob(corpus=beir_small, index="idx"), backend, encoder)
    pools = tmp_path / "pools.jsonl.gz"
    run_mine(
        MineJob(
            index="idx",
            queries=beir_small / "queries.jsonl",
            qrels=beir_small / "qrels/test.tsv",
            out=pools,
            bm25_depth=10,
            knn_depth=10,
        ),
        backend,
        encoder,
    )
    backend.close()
    return store, pools


def test_two_processes_match_one(no_dropout_model: Path, beir_small: Path, tmp_path: Path) -> None:
    store, pools = _indexed_and_mined(no_dropout_model, beir_small, tmp_path)
    one = _train(store, beir_small, pools, tmp_path / "one", [])
    two = _train(store, beir_small, pools, tmp_path / "two", ["--nproc", "2"])
    assert one["plan"]["processes"] == 1 and two["plan"]["processes"] == 2
    assert two["loss"] == pytest.approx(one["loss"], abs=1e-4)
    final_one = sorted((tmp_path / "one").glob("checkpoint-*"))[-1]
    final_two = sorted((tmp_path / "two").glob("checkpoint-*"))[-1]
    a, b = _weights(final_one), _weights(final_two)
    assert a.keys() == b.keys()
    start = _weights(no_dropout_model)
    moved = max(float(np.abs(a[k] - start[k]).max()) for k in a if k in start)
    assert moved > 1e-4  # the steps changed the weights, so equal weights mean equal steps
    for key in a:
        np.testing.assert_allclose(b[key], a[key], atol=2e-6, err_msg=key)


def test_two_processes_share_the_refresh_encoding(no_dropout_model: Path, beir_small: Path, tmp_path: Path) -> None:
    """Each process embeds half the corpus; rank 0 writes both halves: the same index as one process."""
    from hybrid.backends.embedded import EmbeddedBackend

    store, pools = _indexed_and_mined(no_dropout_model, beir_small, tmp_path)
    twin = shutil.copytree(store, tmp_path / "store2")
    _train(store, beir_small, pools, tmp_path / "one", [], refresh=True)
    _train(twin, beir_small, pools, tmp_path / "two", ["--nproc", "2"], refresh=True)
    refreshes = []
    for out in (tmp_path / "one", tmp_path / "two"):
        log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        refreshes.append(next(r["refresh"] for r in log if "refresh" in r))
        assert not list((out / "refresh").glob("*"))  # the shares are deleted once written
    assert [r["encoded_by"] for r in refreshes] == [1, 2]
    assert refreshes[0]["documents"] == refreshes[1]["documents"] == 12
    a, b = EmbeddedBackend(store), EmbeddedBackend(twin)
    ids = sorted(d.id for batch in a.iter_documents("idx") for d in batch)
    assert ids == sorted(d.id for batch in b.iter_documents("idx") for d in batch)
    probes = np.random.default_rng(0).standard_normal((3, 32)).astype(np.float32)
    got, want = b.score("idx", probes, [ids] * 3), a.score("idx", probes, [ids] * 3)
    for x, y in zip(got, want, strict=True):
        np.testing.assert_allclose([x[i] for i in ids], [y[i] for i in ids], atol=1e-5)
    # each index was embedded by its own run's kept model (the same steps, see above)
    for backend, run in ((a, "one"), (b, "two")):
        recipe = backend.info("idx").recipe or {}
        assert recipe["model_path"] == str(tmp_path / run / "models" / "checkpoint-0000003")
    a.close()
    b.close()


def test_rank_zero_alone_takes_every_core(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the other ranks wait for its refresh, rank 0 (given 1/N of the cores) uses them all."""
    import os

    import faiss
    import torch

    from hybrid.training.distributed import Distributed

    cores, before = len(os.sched_getaffinity(0)), torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as `hybrid train --nproc` gives each process its share
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    try:
        with Distributed(rank=0, world=2).alone():
            assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == (cores, cores)
            # a refresh's encoder, built meanwhile as RunState.refresh_encoder builds it, keeps them
            Encoder(EncoderConfig(model=str(tiny_model), device="cpu", threads=torch.get_num_threads()))
            assert torch.get_num_threads() == cores
        assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == (1, 1)
        assert os.environ["OMP_NUM_THREADS"] == "1"  # the process environment is never written
        with Distributed(rank=1, world=2).alone():
            assert torch.get_num_threads() == 1  # only rank 0 works alone
    finally:
        torch.set_num_threads(before)
        faiss.omp_set_num_threads(before)
