"""Node failures on a real 3-node cluster (tests/es_node.py on loopback, 1 replica per shard).

A node is SIGKILLed in the middle of `hybrid index` (a real CLI process) and again in the
middle of a training refresh (a re-embed into a new version). Each must either complete or
fail with a one-line error; a rerun completes; the result then equals a clean run's (count,
ids, vectors); the alias never names an incomplete version; and a search loop running on
the cluster meanwhile gets no errors (the client has every node's URL and moves on).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import es_node
from tests.conftest import es_running, same_index, synthetic_corpus

pytestmark = pytest.mark.cluster

DOCS = 3000


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    version = os.environ.get("HYBRID_TEST_ES_VERSION", es_node.ES9)
    yield from es_running(f"a 3-node Elasticsearch {version} cluster", lambda: es_node.start_cluster(version, nodes=3))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_corpus(tmp_path_factory.mktemp("cluster") / "corpus.jsonl", DOCS)


def _backend(cluster: dict[str, Any]) -> Any:
    from hybrid.backends.elastic import ElasticBackend
    from hybrid.config import ElasticConfig

    return ElasticBackend(ElasticConfig(url=str(cluster["url"]), request_timeout=60))


class SearchLoop:
    """Hybrid searches on ``index`` through a serving engine (which follows version swaps
    with the model of each version) in a thread until stopped, counting errors."""

    def __init__(self, cluster: dict[str, Any], index: str) -> None:
        from hybrid.search import SearchConfig
        from hybrid.serving.engine import Engine, EngineConfig

        self.engine = Engine(_backend(cluster), index, EngineConfig(poll_s=0.2, grace_s=5), owns_backend=True)
        self.engine.start()
        self.config = SearchConfig(mode="hybrid", k=5)
        self.requests = 0
        self.errors: list[str] = []
        self.versions: set[str] = set()  # every version that answered
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        queries = ["ocean tide moon", "bread yeast", "solar panel", "bee w3 w17"]
        while not self.stop.is_set():
            try:
                answer = self.engine.search(queries, self.config, timeout=120)
                self.versions.add(answer.generation.version)
                assert all(len(row) == 5 for row in answer.hits)
            except Exception as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self.requests += 1

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(timeout=120)
        self.engine.close()


def _indexed(backend: Any, pattern: str) -> int:
    """Documents indexed so far into indices matching ``pattern`` (refreshed or not); 0 for
    an index deleted meanwhile (a failed refresh's version is deleted by the next try)."""
    from elasticsearch import NotFoundError

    try:
        stats = backend.client.indices.stats(index=pattern, metric="indexing")
    except NotFoundError:
        return 0
    return int(stats["_all"]["primaries"].get("indexing", {}).get("index_total", 0))


def _wait_for(condition: Any, timeout: float = 120.0, context: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out {context or ''}"
        time.sleep(0.05)


def _cli_index(cluster: dict[str, Any], corpus: Path, index: str, model: Path) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "hybrid.cli", "index", str(corpus), "-i", index, "-m", str(model)]
    args += ["--batch-size", "32", "-q", "--es-url", str(cluster["url"])]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _one_line_error(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert stderr.strip() and len(stderr.strip().splitlines()) <= 2, stderr


def test_node_killed_during_index_and_during_refresh(
    cluster: dict[str, Any], corpus: Path, tiny_model: Path, other_model: Path
) -> None:
    from hybrid.encoder import Encoder, EncoderConfig
    from hybrid.errors import HybridError
    from hybrid.training.refresh import reembed

    encoder = Encoder(EncoderConfig(model=str(tiny_model), batch_size=32))
    backend = _backend(cluster)
    clean = _cli_index(cluster, corpus, "reference", tiny_model)
    assert clean.wait(timeout=600) == 0, clean.communicate()[1]
    assert backend.client.indices.get_settings(index="reference")  # 1 replica: the ES default
    assert all(
        s["settings"]["index"]["number_of_replicas"] == "1"
        for s in backend.client.indices.get_settings(index="reference").values()
    )

    # -- a node dies while `hybrid index` writes ---------------------------------------
    loop = SearchLoop(cluster, "reference")
    proc = _cli_index(cluster, corpus, "victim", tiny_model)
    _wait_for(lambda: _indexed(backend, "victim-v*") >= DOCS // 5)
    assert proc.poll() is None  # still writing: the kill lands mid-index
    es_node.kill_node(cluster, 1)
    _, stderr = proc.communicate(timeout=600)
    outcome = [proc.returncode]
    if proc.returncode != 0:
        _one_line_error(stderr)
    while proc.returncode != 0 and len(outcome) < 3:  # rerun: it resumes where it stopped
        proc = _cli_index(cluster, corpus, "victim", tiny_model)
        _, stderr = proc.communicate(timeout=600)
        outcome.append(proc.returncode)
    loop.finish()
    assert proc.returncode == 0, (outcome, stderr)
    print(f"index: node killed, runs {outcome}; search loop {loop.requests} requests, {len(loop.errors)} errors")
    assert loop.errors == [], loop.errors[:3]
    same_index(backend, "victim", "reference", encoder, DOCS)

    es_node.restart_node(cluster, 1)

    # -- a node dies while a training refresh re-embeds into a new version -------------
    other = Encoder(EncoderConfig(model=str(other_model), batch_size=32))
    reembed(backend, "reference", other, batch_size=32)  # the clean refresh to compare with
    # A writer keeps the swapped-out version a while (the CLI's default is 120 s) so that a
    # server loads the new model before the old version goes; with none, it answers 503.
    backend.retirement.grace_s = 30.0
    before = backend.current("victim")
    loop = SearchLoop(cluster, "victim")
    failures: list[str] = []

    def refresh() -> None:
        for _ in range(3):
            try:
                reembed(backend, "victim", other, batch_size=32)
                return
            except HybridError as exc:  # a clear error; the next try resumes
                failures.append(str(exc))

    worker = threading.Thread(target=refresh)
    worker.start()
    _wait_for(
        lambda: any(_indexed(backend, v) >= DOCS // 5 for v in set(backend.versions("victim")) - {before}),
        context=failures,
    )
    assert worker.is_alive(), failures  # still re-embedding
    es_node.kill_node(cluster, 2)
    worker.join(timeout=600)
    loop.finish()
    after = backend.current("victim")
    print(f"refresh: node killed, failures {failures}; search loop {loop.requests} requests, {len(loop.errors)} errors")
    assert after != before and len(failures) < 3
    assert all("\n" not in f for f in failures)
    assert loop.versions <= {before, after}  # the alias only ever named complete versions
    assert loop.errors == [], loop.errors[:3]
    same_index(backend, "victim", "reference", other, DOCS)
    es_node.restart_node(cluster, 2)
    backend.close()
