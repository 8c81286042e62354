"""``hybrid serve``: a real uvicorn server and a real HTTP client, on both backends."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from hybrid.encoder import Encoder, EncoderConfig
from hybrid.indexing import IndexJob, run_index
from hybrid.manifest import model_hash
from hybrid.search import SearchConfig, Searcher
from hybrid.serving.app import ServeLimits, create_app
from hybrid.serving.engine import Engine, EngineConfig
from hybrid.serving.metrics import Metrics
from hybrid.serving.routes import SearchPath
from hybrid.serving.schemas import request_models
from tests.processes import session_members

QUERIES = ["how do solar panels make electricity", "what causes ocean tides", "how is honey made by bees"]
TOKEN = "a-long-random-test-token-0123456789"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(proc: subprocess.Popen[str], port: int, probe: str, timeout: float = 180) -> str:
    """The base URL once ``probe`` answers 200 (fails if the server process exits first)."""
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            if httpx.get(f"{url}{probe}", timeout=2).status_code == 200:
                return url
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"hybrid serve did not answer {probe}"
        time.sleep(0.2)


@contextmanager
def running(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread; yields its base URL."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def query_loop(
    url: str,
    queries: list[str],
    offset: int,
    stop: threading.Event,
    seen: list[tuple[str, str, int, list[str]]],
    errors: list[str],
) -> None:
    """Dense searches until ``stop``: (version, model hash, query number, ids) of each answer."""
    with httpx.Client(base_url=url, timeout=60) as client:
        i = offset
        while not stop.is_set():
            query = i % len(queries)
            response = client.post("/search", json={"query": queries[query], "mode": "dense", "k": 3})
            if response.status_code != 200:
                errors.append(response.text)
            else:
                body = response.json()
                seen.append((body["version"], body["model_hash"], query, _ids(body["hits"])))
            i += 1


@pytest.fixture
def served_index(backend_and_name: tuple[Any, str], tiny_encoder: Any, beir_small: Path) -> tuple[Any, str]:
    backend, name = backend_and_name
    run_index(IndexJob(corpus=beir_small, index=name), backend, tiny_encoder)
    return backend, name


def _ids(rows: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in rows]


def test_search_endpoints_match_the_library(served_index: tuple[Any, str], tiny_model: Path) -> None:
    backend, name = served_index
    engine = Engine(backend, name, EngineConfig(max_wait_ms=5, poll_s=0.2))
    limits = ServeLimits(max_batch=4, max_query_chars=200, max_body_bytes=20_000)
    expected_hash = model_hash(tiny_model)
    with running(create_app(engine, limits)) as url, httpx.Client(base_url=url, timeout=60) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        version = ready.json()["version"]
        assert ready.json()["model_hash"] == expected_hash and ready.json()["dims"] == 32
        assert client.get("/livez").json() == {"status": "ok"}

        searcher = Searcher(backend, name)
        for mode in ("bm25", "dense", "hybrid"):
            body = client.post("/search", json={"query": QUERIES[0], "mode": mode, "k": 3}).json()
            want = searcher.search([QUERIES[0]], SearchConfig(mode=mode, k=3))[0]  # type: ignore[arg-type]
            assert _ids(body["hits"]) == [h.id for h in want], mode
            assert body["version"] == version and body["model_hash"] == expected_hash
            assert {"title", "text"} <= set(body["hits"][0])

        linear = {"query": QUERIES[1], "fusion": "linear", "bm25_weight": 0.3, "dense_weight": 0.7, "k": 4}
        got = client.post("/search", json=linear).json()["hits"]
        fusion = SearchConfig(k=4).fusion.__class__(method="linear", bm25_weight=0.3, dense_weight=0.7)
        want = searcher.search([QUERIES[1]], SearchConfig(k=4, fusion=fusion))[0]
        assert _ids(got) == [h.id for h in want] and "sources" in got[0]

        only_titles = client.post("/search", json={"query": QUERIES[2], "fields": ["title"]}).json()["hits"][0]
        assert "title" in only_titles and "text" not in only_titles

        batch = client.post("/search/batch", json={"queries": QUERIES, "mode": "dense", "k": 2}).json()
        singles = [client.post("/search", json={"query": q, "mode": "dense", "k": 2}).json() for q in QUERIES]
        assert [_ids(r["hits"]) for r in batch["results"]] == [_ids(s["hits"]) for s in singles]

        doc_id = singles[0]["hits"][0]["id"]
        doc = client.get(f"/docs/{doc_id}")
        assert doc.status_code == 200 and doc.json()["id"] == doc_id and doc.json()["text"]
        missing = client.get("/docs/no-such-doc")
        assert missing.status_code == 404 and "no-such-doc" in missing.json()["error"]

        for bad in ({"query": "x", "k": 1001}, {"query": "x", "mode": "fuzzy"}, {"query": ""}, {"query": "x", "kk": 1}):
            response = client.post("/search", json=bad)
            assert response.status_code == 422, (bad, response.text)
            assert "error" in response.json()
        assert client.post("/search", json={"query": "x" * 201}).status_code == 413
        assert client.post("/search/batch", json={"queries": ["x"] * 5}).status_code == 413
        assert client.post("/search", json={"query": "x", "pad": "y" * 30_000}).status_code == 413

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted as it streams
            yield b'{"query": "x", "pad": "'
            for _ in range(40):
                yield b"y" * 1000
            yield b'"}'

        streamed = client.post("/search", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413, streamed.text

        metrics = client.get("/metrics").text
        assert 'hybrid_requests_total{route="/search",status="200"}' in metrics
        assert 'hybrid_search_seconds_count{mode="dense"}' in metrics
        assert "hybrid_batch_queries_count" in metrics
        assert 'hybrid_errors_total{kind="too_large"} 4.0' in metrics
        assert client.get("/openapi.json").json()["paths"]["/search"]


def test_bearer_token(served_index: tuple[Any, str]) -> None:
    backend, name = served_index
    for protect in (False, True):
        engine = Engine(backend, name, EngineConfig(poll_s=0.2))
        app = create_app(engine, ServeLimits(api_key=TOKEN, protect_probes=protect))
        with running(app) as url, httpx.Client(base_url=url, timeout=60) as client:
            assert client.post("/search", json={"query": "tides"}).status_code == 401
            wrong = {"Authorization": "Bearer " + TOKEN[:-1] + "x"}
            assert client.post("/search", json={"query": "tides"}, headers=wrong).status_code == 401
            right = {"Authorization": f"Bearer {TOKEN}"}
            assert client.post("/search", json={"query": "tides"}, headers=right).status_code == 200
            assert client.get("/metrics").status_code == (401 if protect else 200)
            assert client.get("/readyz").status_code == (401 if protect else 200)
            assert client.get("/metrics", headers=right).status_code == 200
            assert client.get("/openapi.json").status_code == 200


def test_concurrent_requests_are_micro_batched(served_index: tuple[Any, str]) -> None:
    backend, name = served_index
    engine = Engine(backend, name, EngineConfig(max_wait_ms=200, max_batch=64)).start()
    try:
        config = SearchConfig(mode="dense", k=3)
        futures = [engine.submit([q], config) for q in QUERIES * 4]
        answers = [f.result(60) for f in futures]
    finally:
        engine.close()
    assert max(a.batch_size for a in answers) > 1
    want = Searcher(backend, name).search(QUERIES * 4, config)
    assert [[h.id for h in a.hits[0]] for a in answers] == [[h.id for h in row] for row in want]


def test_a_lone_query_does_not_wait_for_company(served_index: tuple[Any, str]) -> None:
    """The batch wait applies only while queries come together: one client's queries each run
    at once (with a 30 s wait they would time out below). Concurrent ones still batch
    (test_concurrent_requests_are_micro_batched)."""
    backend, name = served_index
    engine = Engine(backend, name, EngineConfig(max_wait_ms=30_000)).start()
    try:
        config = SearchConfig(mode="dense", k=3)
        for query in QUERIES:
            assert engine.search([query], config, timeout=20).batch_size == 1
    finally:
        engine.close()


def test_swap_to_another_model_while_serving(
    served_index: tuple[Any, str], tiny_model: Path, other_model: Path, beir_small: Path
) -> None:
    """A client loop runs while the index is rebuilt by another model: zero errors, and every
    response comes from one real (version, model) pair with that pair's own results."""
    backend, name = served_index
    first = backend.current(name)
    config = SearchConfig(mode="dense", k=3)
    expected = {(first, model_hash(tiny_model)): Searcher(backend, name).search(QUERIES, config)}
    engine = Engine(backend, name, EngineConfig(max_wait_ms=2, poll_s=0.05, grace_s=0.5))
    seen: list[tuple[str, str, int, list[str]]] = []
    errors: list[str] = []
    stop = threading.Event()

    with running(create_app(engine)) as url:
        threads = [threading.Thread(target=query_loop, args=(url, QUERIES, n, stop, seen, errors)) for n in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        other = Encoder(EncoderConfig(model=str(other_model), batch_size=8))
        # the writer keeps the old version while the server loads the new model (the CLI
        # keeps it 120 s); with none, the server answers 503 until it has switched
        backend.retirement.grace_s = 15.0
        run_index(IndexJob(corpus=beir_small, index=name, recreate=True), backend, other)
        second = backend.current(name)
        expected[(second, model_hash(other_model))] = Searcher(backend, name).search(QUERIES, config)
        deadline = time.monotonic() + 60
        while not any(v == second for v, *_ in seen[-5:]) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert second != first
    assert errors == []
    pairs = {(v, h) for v, h, _, _ in seen}
    assert pairs == set(expected), pairs
    for version, digest, query, ids in seen:
        assert ids == [h.id for h in expected[(version, digest)][query]]


@pytest.mark.es
def test_requests_never_wait_on_a_model_load(
    es_backend: Any, es_prefix: str, tiny_encoder: Any, other_model: Path, beir_small: Path
) -> None:
    """The index is rebuilt by a model the server has never seen, its old version deleted at
    once (--grace 0): while the watcher loads the new model (slowed here to 6 s), requests are
    answered or refused with 503 + Retry-After at once, never held for the load; then the
    server switches."""
    from hybrid.serving.engine import server_encoder

    name = f"{es_prefix}-swap"
    run_index(IndexJob(corpus=beir_small, index=name), es_backend, tiny_encoder)
    loads: list[str] = []

    def slow_factory(recipe: Any, model: str) -> Any:
        loads.append(model)
        if len(loads) > 1:
            time.sleep(6)  # a big model's load and ONNX export
        return server_encoder(recipe, model)

    engine = Engine(es_backend, name, EngineConfig(max_wait_ms=2, poll_s=0.05), encoder_factory=slow_factory)
    es_backend.retirement.grace_s = 0
    timings: list[tuple[float, int, str]] = []
    stop = threading.Event()

    def loop(url: str) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            while not stop.is_set():
                started = time.monotonic()
                response = client.post("/search", json={"query": QUERIES[0], "mode": "dense", "k": 3})
                version = response.json().get("version", "") if response.status_code == 200 else ""
                timings.append((time.monotonic() - started, response.status_code, version))
                if response.status_code == 503:
                    assert response.headers["retry-after"] and "retry shortly" in response.json()["error"]
                time.sleep(0.02)

    with running(create_app(engine)) as url:
        thread = threading.Thread(target=loop, args=(url,))
        thread.start()
        try:
            time.sleep(0.5)
            other = Encoder(EncoderConfig(model=str(other_model), batch_size=8))
            run_index(IndexJob(corpus=beir_small, index=name, recreate=True), es_backend, other)
            second = es_backend.current(name)
            deadline = time.monotonic() + 90
            while not any(v == second for *_, v in timings[-3:]) and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            stop.set()
            thread.join(timeout=60)
    assert len(loads) == 2 and any(v == second for *_, v in timings), timings[-5:]
    assert {status for _, status, _ in timings} <= {200, 503}
    slowest = max(seconds for seconds, _, _ in timings)
    assert slowest < 3, f"a request waited {slowest:.1f} s: it was held for the model load"


def test_cli_serve_process(tmp_path: Path, tiny_encoder: Any, beir_small: Path) -> None:
    """`hybrid serve` as a real process: ready, answers, stops on SIGTERM (exiting normally, the
    index closed, no process left behind); a bad index is one line."""
    from hybrid.backends.embedded import EmbeddedBackend

    store = tmp_path / "store"
    backend = EmbeddedBackend(store)
    run_index(IndexJob(corpus=beir_small, index="demo"), backend, tiny_encoder)
    backend.close()
    cli = [sys.executable, "-m", "hybrid.cli"]
    missing = subprocess.run([*cli, "serve", "-i", "nope", "--store", str(store)], capture_output=True, text=True)
    assert missing.returncode == 1
    hint = "create it with: hybrid index CORPUS --index nope"
    assert missing.stderr.strip() == f"Error: index 'nope' not found in {store}; {hint}"

    key_file = tmp_path / "token"
    key_file.write_text(TOKEN + "\n")
    port = _free_port()
    args = [*cli, "serve", "-i", "demo", "--store", str(store), "--port", str(port), "--api-key-file", str(key_file)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        url = wait_until_up(proc, port, "/livez")
        headers = {"Authorization": f"Bearer {TOKEN}"}
        body = httpx.post(f"{url}/search", json={"query": "ocean tides", "k": 2}, headers=headers, timeout=60).json()
        assert len(body["hits"]) == 2 and body["version"] == "demo-v000001"
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0]
    # uvicorn shuts down cleanly and raises the signal again, which hybrid turns into a normal exit
    assert proc.returncode == 0, output
    assert "Application shutdown complete" in output
    assert TOKEN not in output and "Traceback" not in output
    assert session_members(proc.pid) == [], "hybrid serve left a process running"


def test_serve_refuses_short_token(tmp_path: Path) -> None:
    key_file = tmp_path / "token"
    key_file.write_text("short")
    done = subprocess.run(
        [sys.executable, "-m", "hybrid.cli", "serve", "-i", "x", "--api-key-file", str(key_file)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "shorter than 16 characters" in done.stderr


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--grace", "-1"),
        ("--max-wait-ms", "nan"),
        ("--poll", "0"),
        ("--port", "70000"),
        ("--max-batch-queries", "0"),
        ("--max-k", "5000"),
        ("--es-timeout", "nan"),
    ],
)
def test_serve_options_are_range_checked(option: str, value: str, tmp_path: Path) -> None:
    from hybrid.cli.app import app
    from typer.testing import CliRunner

    url = ["--es-url", "http://127.0.0.1:1"] if option == "--es-timeout" else ["--store", str(tmp_path)]
    result = CliRunner().invoke(app, ["serve", "-i", "x", *url, option, value])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {option} must be"), result.output


def test_cli_serve_with_two_worker_processes(tmp_path: Path, tiny_encoder: Any, beir_small: Path) -> None:
    """`--workers 2`: two uvicorn worker processes, each with its own engine, answer alike."""
    from hybrid.backends.embedded import EmbeddedBackend

    store = tmp_path / "store"
    backend = EmbeddedBackend(store)
    run_index(IndexJob(corpus=beir_small, index="demo"), backend, tiny_encoder)
    backend.close()
    port = _free_port()
    args = [sys.executable, "-m", "hybrid.cli", "serve", "-i", "demo", "--store", str(store), "--port", str(port)]
    proc = subprocess.Popen([*args, "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = wait_until_up(proc, port, "/readyz")
        answers = {
            json.dumps(httpx.post(f"{url}/search", json={"query": q, "k": 3}, timeout=60).json()["hits"])
            for q in ["ocean tides"] * 8
        }
        assert len(answers) == 1  # whichever worker answered, the same hits
        # the workers' settings (which may hold a password) come from a private file, not
        # from the environment itself
        handed = {_environ(pid).get("HYBRID_SERVE_SETTINGS") for pid in _children(proc.pid)} - {None}
        assert len(handed) == 1
        settings_file = Path(handed.pop() or "")
        assert settings_file.stat().st_mode & 0o077 == 0
        assert json.loads(settings_file.read_text())["index"] == "demo"
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0]
    assert output.count("Started server process") == 2, output
    assert "Traceback" not in output
    assert not settings_file.exists()  # removed on exit


def _children(pid: int) -> list[int]:
    """Every process descended from ``pid`` (Linux /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [child for child, ppid in parents.items() if ppid == parent]
        found += kids
        frontier += kids
    return found


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {key: value for key, _, value in pairs}


def test_given_up_requests_and_bad_queries_do_not_stop_the_engine(served_index: tuple[Any, str]) -> None:
    backend, name = served_index
    engine = Engine(backend, name, EngineConfig(max_wait_ms=100)).start()
    try:
        config = SearchConfig(mode="dense", k=2)
        abandoned = engine.submit(["ocean tides"], config)
        assert abandoned.cancel()  # the client went away (a timeout, a closed connection)
        lone = engine.submit(["broken \ud800 surrogate"], config)  # a JSON "\\ud800" gets this far
        fine = engine.submit(["ocean tides"], config)
        assert len(fine.result(60).hits[0]) == 2 and len(lone.result(60).hits[0]) == 2
        assert engine.healthy
        again = engine.search(["honey bees"], config, timeout=60)
        assert len(again.hits[0]) == 2
    finally:
        engine.close()


def _refused(response: httpx.Response, status: int, *words: str) -> str:
    """The error message of a JSON error answer with ``status``; fails unless it names ``words``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json", response.text
    body = response.json()
    assert list(body) == ["error"] and "Traceback" not in body["error"], body
    assert all(word in body["error"] for word in words), body
    assert ("retry-after" in response.headers) == (status == 503)
    return str(body["error"])


def test_one_json_error_contract(served_index: tuple[Any, str]) -> None:
    """Every answer that is not 2xx is JSON {"error": ...} naming what is wrong; numbers are
    finite and in range, types strict, empty queries refused everywhere alike."""
    backend, name = served_index
    engine = Engine(backend, name, EngineConfig(max_wait_ms=5))
    with running(create_app(engine)) as url, httpx.Client(base_url=url, timeout=60) as client:
        raw = {"content-type": "application/json"}
        huge = b'{"query": "computer", "fusion": "linear", "bm25_weight": 1e999}'
        _refused(client.post("/search", content=huge, headers=raw), 422, "bm25_weight", "finite")
        nan = b'{"query": "computer", "bm25_weight": NaN}'
        _refused(client.post("/search", content=nan, headers=raw), 422, "bm25_weight", "finite")
        _refused(client.post("/search", json={"query": "x", "dense_weight": 1e300}), 422, "dense_weight")
        _refused(client.post("/search", json={"query": "x", "k": "5"}), 422, "k:")
        _refused(client.post("/search", json={"query": "x", "k": True}), 422, "k:")
        _refused(client.post("/search", json={"query": "x", "bm25_weight": 0, "dense_weight": 0}), 422, "both 0")
        for query in ("", "   \t"):
            _refused(client.post("/search", json={"query": query}), 422, "query", "empty")
            _refused(client.post("/search/batch", json={"queries": ["tides", query]}), 422, "queries.1", "empty")
        _refused(client.post("/search", content=b'{"query": ', headers=raw), 400, "not valid JSON")
        form = {"content-type": "application/x-www-form-urlencoded"}  # curl -d without -H
        _refused(client.post("/search", content=b'{"query": "x"}', headers=form), 422, "Content-Type: application/json")
        _refused(client.post("/search", content=b"[1]", headers=raw), 422, "must be a JSON object")
        _refused(client.get("/no/such/route"), 404)
        _refused(client.get("/search"), 405)
        _refused(client.get("/docs/no-such-doc"), 404, "no-such-doc")

        # the same keep-alive connection still answers, with scores free of float noise
        linear = {"query": "computer", "fusion": "linear", "bm25_weight": 0.3, "dense_weight": 0.7}
        hits = client.post("/search", json=linear).json()["hits"]
        scores = [h["score"] for h in hits] + [s for h in hits for s in h["sources"].values()]
        assert scores and all(s == float(f"{s:.7g}") for s in scores)
        assert client.post("/search", json={"query": "x", "k": 2, "bm25_weight": 1}).status_code == 200

        responses = client.get("/openapi.json").json()["paths"]["/search"]["post"]["responses"]
        assert {"400", "401", "404", "413", "422", "503"} <= set(responses)
        assert responses["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
        assert "Retry-After" in responses["503"]["headers"]


def test_json_searches_answer_as_the_routes_do(served_index: tuple[Any, str]) -> None:
    """A JSON search is answered before the router (routes.SearchPath); a JSON body of another
    media type (``application/x+json``) still goes through FastAPI's routes. Both answer the
    same requests with the same status and body, bad ones included, behind the same guard."""
    backend, name = served_index
    engine = Engine(backend, name, EngineConfig(max_wait_ms=5))
    limits = ServeLimits(max_batch=4, max_query_chars=200, api_key=TOKEN)
    bodies = (
        [("/search", {"query": QUERIES[0], "mode": mode, "k": 3}) for mode in ("bm25", "dense", "hybrid")]
        + [
            ("/search", {"query": QUERIES[1], "fusion": "linear", "bm25_weight": 0.3, "fields": ["title"]}),
            ("/search", {"query": "broken \ud800 surrogate", "mode": "dense", "k": 2}),  # the JSON escape
            ("/search/batch", {"queries": QUERIES[:3], "mode": "dense", "k": 2, "fields": []}),
            ("/search", {"query": "x", "k": "5"}),
            ("/search", {"query": "  "}),
            ("/search", {"query": "x", "kk": 1}),
            ("/search", {"query": "x" * 201}),
            ("/search/batch", {"queries": ["x"] * 5}),
            ("/search/batch", {"queries": ["tides", ""]}),
        ]
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with running(create_app(engine, limits)) as url, httpx.Client(base_url=url, timeout=60) as client:
        odd = [b"", b"null", b"[1]", b'"x"', b"{bad", b'{"query": "x"} trailing', b"\xff\xfe"]
        for path, raw in [(p, json.dumps(b).encode()) for p, b in bodies] + [("/search", o) for o in odd]:
            answers = []
            for media in ("application/json", "application/json; charset=utf-8", "application/x+json"):
                response = client.post(path, content=raw, headers={**auth, "content-type": media})
                answer = response.json()
                answer.pop("took_ms", None)
                answers.append((response.status_code, answer))
            assert answers[0] == answers[1] == answers[2], (path, raw, answers)
        assert client.post("/search", json={"query": "tides"}).status_code == 401  # the guard comes first
        _refused(client.post("/search", content=b"[1]", headers={**auth, "content-type": "application/json"}), 422)
        metrics = client.get("/metrics", headers=auth).text
        assert 'hybrid_requests_total{route="/search",status="200"}' in metrics
        assert 'hybrid_search_seconds_count{mode="bm25"} 3.0' in metrics  # one per media type


def test_search_path_answers_valid_json_searches_before_the_app(served_index: tuple[Any, str]) -> None:
    """routes.SearchPath answers a valid JSON search itself; every other request, a JSON
    search it cannot answer included, goes on to the app with its body intact."""
    backend, name = served_index
    engine = Engine(backend, name, EngineConfig(max_wait_ms=5)).start()
    reached: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(f"{scope['method']} {scope['path']} {(await receive()).get('body', b'').decode()}")
        await send({"type": "http.response.start", "status": 418, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def requests() -> list[int]:
        path = SearchPath(app, engine, ServeLimits(), Metrics(backend, name), request_models(ServeLimits().max_k))
        transport = httpx.ASGITransport(app=path)
        async with httpx.AsyncClient(transport=transport, base_url="http://hybrid") as client:
            sent = [
                client.post("/search", json={"query": "tides", "mode": "dense", "k": 2}),
                client.post("/search/batch", json={"queries": ["tides", "bees"], "k": 1}),
                client.post("/search", json={"query": " "}),
                client.post("/search", content=b'{"query": ', headers={"content-type": "application/json"}),
                client.post("/search", content=b'{"query": "x"}', headers={"content-type": "application/x+json"}),
                client.post("/search", content=b'{"query": "x"}'),
                client.get("/search"),
                client.post("/docs/x", json={"query": "x"}),
            ]
            return [(await request).status_code for request in sent]

    try:
        statuses = asyncio.run(requests())
    finally:
        engine.close()
    assert statuses == [200, 200] + [418] * 6
    assert reached == [
        'POST /search {"query":" "}',  # httpx writes json= compactly
        'POST /search {"query": ',
        'POST /search {"query": "x"}',
        'POST /search {"query": "x"}',
        "GET /search ",
        'POST /docs/x {"query":"x"}',
    ]


@pytest.mark.es
def test_unreachable_backend_is_503_json(
    es_backend: Any, es_prefix: str, tiny_encoder: Any, beir_small: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With Elasticsearch gone, /search, /search/batch, /docs/{id} and /readyz answer 503
    JSON with Retry-After, never a plain-text 500 or an exception's chain. The watcher logs
    the outage once, not at every poll, and logs its end."""
    from elasticsearch import Elasticsearch

    name = f"{es_prefix}-gone"
    run_index(IndexJob(corpus=beir_small, index=name), es_backend, tiny_encoder)
    engine = Engine(es_backend, name, EngineConfig(max_wait_ms=5, poll_s=0.2))
    real = es_backend.client
    with running(create_app(engine)) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/readyz").status_code == 200
        es_backend.client = Elasticsearch(f"http://127.0.0.1:{_free_port()}", request_timeout=5, max_retries=0)
        try:
            for mode in ("bm25", "dense", "hybrid"):
                _refused(client.post("/search", json={"query": "tides", "mode": mode}), 503, "not reachable")
            _refused(client.post("/search/batch", json={"queries": ["tides", "bees"]}), 503, "not reachable")
            _refused(client.get("/docs/d1"), 503, "not reachable")
            message = _refused(client.get("/readyz"), 503, "not reachable")
            assert "Error" not in message and "127.0.0.1" not in message
            time.sleep(1.5)  # several polls of the watcher into the outage
        finally:
            es_backend.client.close()
            es_backend.client = real
        assert client.post("/search", json={"query": "tides"}).status_code == 200
        deadline = time.monotonic() + 10
        while not any("works again" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
            time.sleep(0.1)
    watch = [r.getMessage() for r in caplog.records if r.name == "hybrid.serving.engine"]
    assert sum(f"watching {name} failed" in m for m in watch) == 1, watch
    assert f"watching {name} works again" in watch, watch


def test_serve_switches_the_query_model_under_load(
    served_index: tuple[Any, str], tiny_model: Path, other_model: Path
) -> None:
    """A query version (hybrid train --update query) is picked up by a running server: same
    physical version, new query model, 0 failed requests, and every answer names the query
    model that embedded it."""
    from hybrid.training.query_side import apply_query_model

    backend, name = served_index
    engine = Engine(backend, name, EngineConfig(max_wait_ms=5, poll_s=0.1))
    limits = ServeLimits(max_batch=4, max_query_chars=200, max_body_bytes=20_000)
    queries = [q for q in QUERIES if q.strip()]
    errors: list[str] = []
    hashes: list[str] = []
    stop = threading.Event()
    with running(create_app(engine, limits)) as url:

        def loop() -> None:
            with httpx.Client(base_url=url, timeout=60) as client:
                while not stop.is_set():
                    response = client.post("/search", json={"query": queries[0], "mode": "dense", "k": 3})
                    if response.status_code != 200:
                        errors.append(response.text)
                    else:
                        hashes.append(response.json()["query_model_hash"])

        version = backend.current(name)
        workers = [threading.Thread(target=loop) for _ in range(2)]
        for worker in workers:
            worker.start()
        time.sleep(1.0)
        # A model of the same shape applied as the query side of the same vectors (the
        # guard and training are skipped here; tests/test_query_side.py covers them).
        apply_query_model(backend, name, other_model, "other")
        deadline = time.monotonic() + 60
        while (not hashes or hashes[-1] != model_hash(other_model)) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        stop.set()
        for worker in workers:
            worker.join(timeout=30)
    assert not errors, errors[:3]
    assert backend.current(name) == version  # no new version, no copy
    assert hashes[0] == model_hash(tiny_model) and hashes[-1] == model_hash(other_model)
    switched = hashes.index(model_hash(other_model))
    assert all(h == model_hash(other_model) for h in hashes[switched:])  # never back to the old one


@pytest.mark.es
def test_metrics_count_documents_another_writer_added(
    es_backend: Any, es_prefix: str, tiny_encoder: Any, beir_small: Path
) -> None:
    """A document written through the alias by another process has no vector: /metrics and
    hybrid info say how many (hybrid sync embeds them)."""
    name = f"{es_prefix}-idx"
    run_index(IndexJob(corpus=beir_small, index=name), es_backend, tiny_encoder)
    es_backend.client.index(index=name, id="other", document={"id": "other", "text": "written by someone else"})
    es_backend.client.indices.refresh(index=name)
    assert es_backend.info(name).extra["without_vector"] == 1
    engine = Engine(es_backend, name, EngineConfig(max_wait_ms=5, poll_s=0.2))
    with running(create_app(engine)) as url, httpx.Client(base_url=url, timeout=60) as client:
        metrics = client.get("/metrics").text
    assert "hybrid_documents_without_vector 1.0" in metrics
