"""SIGKILL fault injection: `hybrid index`, `hybrid mine` and `hybrid train` are killed at
seeded random moments on both backends; after each kill, a rerun (or `train --resume`,
as the error message says) ends in the state an uninterrupted run reaches: the same count,
ids and vectors; the same pools; the same loss at every step and the same final weights.
The embedded store's SQLite files pass an integrity check after every kill.

Trials per command and backend: HYBRID_KILL_TRIALS (default 10). Every trial prints its
kill moment and outcome (``pytest -s`` shows them).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import same_index, synthetic_corpus, write_jsonl

pytestmark = pytest.mark.kills

TRIALS = int(os.environ.get("HYBRID_KILL_TRIALS", "10"))
DOCS = 1500
QUERIES = 120
HYBRID = [sys.executable, "-m", "hybrid.cli"]


class Setup:
    """One backend's reference runs (uninterrupted) and how to point a command at it."""

    def __init__(self, kind: str, where: list[str], prefix: str, root: Path, backend: Any) -> None:
        self.kind = kind
        self.where = where
        self.prefix = prefix
        self.root = root
        self.backend = backend
        self.seconds: dict[str, float] = {}

    def name(self, label: str) -> str:
        return f"{self.prefix}{label}"


def run(args: list[str], timeout: float = 600) -> tuple[int, str, float]:
    start = time.perf_counter()
    done = subprocess.run([*HYBRID, *args], capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stderr, time.perf_counter() - start


def killed(args: list[str], after: float) -> bool:
    """Run ``args``, SIGKILL it (its whole process group) ``after`` seconds in; True if it was
    still running then (False: it had already finished)."""
    proc = subprocess.Popen(
        [*HYBRID, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        proc.wait(timeout=after)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


def sqlite_intact(store: Path) -> None:
    for path in store.rglob("*.sqlite"):
        with contextlib.closing(sqlite3.connect(path)) as conn:  # closed: an open reader blocks the rerun
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)], path


@pytest.fixture(scope="module", params=["embedded", pytest.param("es", marks=pytest.mark.es)])
def setup(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_model: Path
) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp(f"kills-{request.param}")
    if request.param == "es":
        from hybrid.backends.elastic import ElasticBackend
        from hybrid.config import ElasticConfig

        url = request.getfixturevalue("es_url")
        backend: Any = ElasticBackend(ElasticConfig(url=url, request_timeout=60))
        prefix = f"hyk-{os.getpid()}-"
        where = ["--es-url", url]
    else:
        from hybrid.backends.embedded import EmbeddedBackend

        backend = EmbeddedBackend(root / "store")
        prefix = ""
        where = ["--store", str(root / "store")]
    s = Setup(request.param, where, prefix, root, backend)
    corpus = synthetic_corpus(root / "corpus.jsonl", DOCS, seed=1)
    rng = random.Random(2)
    rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    picked = rng.sample(rows, QUERIES)
    queries = [{"_id": f"q{i}", "text": " ".join(r["text"].split()[:5])} for i, r in enumerate(picked)]
    write_jsonl(root / "queries.jsonl", queries)
    (root / "qrels.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\t{r['_id']}\t1\n" for i, r in enumerate(picked))
    )
    (root / "train.yaml").write_text(
        f"index: {s.name('ref')}\nqueries: {root / 'queries.jsonl'}\nqrels: {root / 'qrels.tsv'}\n"
        f"model: {tiny_model}\nsteps: 8\nbatch_size: 4\npassage_max_length: 32\nseed: 7\n"
        "sampler:\n  name: simans\n  n: 2\n  depth: 8\n"
    )
    # the uninterrupted references
    rc, err, s.seconds["index"] = run(index_args(s, "ref", tiny_model))
    assert rc == 0, err
    rc, err, _ = run(mine_args(s, root / "warm-pools.jsonl.gz"))  # exports the ONNX query encoder once
    assert rc == 0, err
    rc, err, s.seconds["mine"] = run(mine_args(s, root / "ref-pools.jsonl.gz"))
    assert rc == 0, err
    rc, err, s.seconds["train"] = run(train_args(s, root / "ref-run"))
    assert rc == 0, err
    try:
        yield s
    finally:
        if request.param == "es":
            backend.client.indices.delete(index=f"{prefix}*", allow_no_indices=True, expand_wildcards="all")
        backend.close()


def index_args(s: Setup, label: str, model: Path) -> list[str]:
    corpus = s.root / "corpus.jsonl"
    return ["index", str(corpus), "-i", s.name(label), "-m", str(model), "--batch-size", "100", "-q", *s.where]


def mine_args(s: Setup, out: Path) -> list[str]:
    labels = ["--queries", str(s.root / "queries.jsonl"), "--qrels", str(s.root / "qrels.tsv")]
    depths = ["--bm25-depth", "10", "--knn-depth", "10"]
    return ["mine", "-i", s.name("ref"), *labels, "--out", str(out), *depths, "-q", *s.where]


def train_args(s: Setup, out: Path) -> list[str]:
    args = ["train", "--config", str(s.root / "train.yaml"), "--out", str(out)]
    args += ["--pools", str(s.root / "ref-pools.jsonl.gz"), "--save-every", "2", "--no-refresh-at-end"]
    return [*args, "-q", *s.where]


def moments(command: str, s: Setup) -> list[float]:
    """Seeded kill moments spread over an uninterrupted run's duration (past most of the
    interpreter's start-up, where a kill only tests that nothing had begun)."""
    rng = random.Random(f"{command}-{s.kind}")
    return [round(rng.uniform(0.4, 0.98) * s.seconds[command], 2) for _ in range(TRIALS)]


def _finish(args: list[str], attempts: int = 3) -> int:
    """Rerun until it succeeds; returns how many reruns it took."""
    for attempt in range(1, attempts + 1):
        rc, err, _ = run(args)
        if rc == 0:
            return attempt
        assert "Traceback" not in err, err
    raise AssertionError(f"still failing after {attempts} reruns: {err}")


def test_index_killed_then_rerun(setup: Setup, tiny_model: Path) -> None:
    from hybrid.encoder import Encoder, EncoderConfig

    encoder = Encoder(EncoderConfig(model=str(tiny_model), batch_size=32))
    for trial, after in enumerate(moments("index", setup)):
        label = f"k{trial}"
        args = index_args(setup, label, tiny_model)
        interrupted = killed(args, after)
        if setup.kind == "embedded":
            sqlite_intact(setup.root / "store")
        reruns = _finish(args)
        print(f"index/{setup.kind} trial {trial}: killed at {after}s={interrupted}, reruns {reruns}")
        same_index(setup.backend, setup.name(label), setup.name("ref"), encoder, DOCS)
        setup.backend.drop(setup.name(label))


def test_mine_killed_then_rerun(setup: Setup) -> None:
    want = _pools(setup.root / "ref-pools.jsonl.gz")
    for trial, after in enumerate(moments("mine", setup)):
        out = setup.root / f"pools-{trial}.jsonl.gz"
        interrupted = killed(mine_args(setup, out), after)
        # the pool file appears (atomically) only when complete; then a rerun has nothing to do
        reruns = 0 if out.exists() else _finish(mine_args(setup, out))
        print(f"mine/{setup.kind} trial {trial}: killed at {after}s={interrupted}, reruns {reruns}")
        assert _pools(out) == want


def test_train_killed_then_resumed(setup: Setup) -> None:
    want_losses = _losses(setup.root / "ref-run")
    want_weights = _weights(setup.root / "ref-run")
    for trial, after in enumerate(moments("train", setup)):
        out = setup.root / f"run-{trial}"
        interrupted = killed(train_args(setup, out), after)
        # the rerun a user makes: the same command, then --resume if it says so
        rc, err, _ = run(train_args(setup, out))
        resume = rc != 0 and "pass --resume" in err
        assert rc == 0 or resume, err
        reruns = 1 + (_finish([*train_args(setup, out), "--resume"]) if resume else 0)
        print(f"train/{setup.kind} trial {trial}: killed at {after}s={interrupted}, resumed={resume}, reruns {reruns}")
        assert _losses(out) == pytest.approx(want_losses, abs=1e-6)
        got = _weights(out)
        assert got.keys() == want_weights.keys()
        assert all(np.allclose(got[k], want_weights[k], atol=1e-6) for k in got)


def _pools(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt") as fh:
        return sorted((json.loads(line) for line in fh), key=lambda r: r["qid"])


def _losses(run_dir: Path) -> dict[int, float]:
    """The loss at each step (a step logged twice, before a kill and after the resume: the last)."""
    rows = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _weights(run_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    final = sorted(run_dir.glob("checkpoint-*"))[-1]
    return load_file(str(final / "model.safetensors"))
