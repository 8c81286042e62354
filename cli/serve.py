"""``hybrid serve``: a long-running HTTP search server in front of one index."""

from __future__ import annotations

import json
import math
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from hybrid.errors import ConfigError

from .common import BackendOptions, IndexOpt, Params, backend_options, err_console, handle_errors, option_group

if TYPE_CHECKING:
    from hybrid.serving.engine import EngineConfig

# The path of a file (mode 0600, deleted on exit) holding the settings for each uvicorn
# worker process: they may hold a secret (an ES password), which an environment variable
# would show to anyone who can read the process's environment.
_WORKER_ENV = "HYBRID_SERVE_SETTINGS"
_stopping = threading.Event()  # SIGTERM received: the server is shutting down


Opt = typer.Option

HostOpt = Annotated[str, Opt("--host", help="Address to bind; 0.0.0.0 exposes the server.")]
PortOpt = Annotated[int, Opt("--port", help="TCP port.")]
WorkersOpt = Annotated[int, Opt("--workers", help="Server processes (each loads the model).")]
ApiKeyFileOpt = Annotated[
    Path | None, Opt("--api-key-file", help="File holding a bearer token that every request must present.")
]
AccessLogOpt = Annotated[bool, Opt("--access-log/--no-access-log", help="Log each request.")]

# How each server process batches queries and follows index swaps (the engine's settings).
_ENGINE: Params = [
    ("max_batch", Annotated[int, Opt("--max-batch", help="Queries per micro-batch.")], 32),
    (
        "max_wait_ms",
        Annotated[
            float,
            Opt("--max-wait-ms", help="How long a query waits for others to batch with (while queries come together)."),
        ],
        0.0,
    ),
    (
        "batch_threads",
        Annotated[
            int,
            Opt("--batch-threads", help="Threads running micro-batches (one encodes while another searches)."),
        ],
        2,
    ),
    ("poll", Annotated[float, Opt("--poll", help="Seconds between checks for a new index version.")], 1.0),
    # not the writers' --grace (common.GraceOpt): how long this server keeps a version it has left
    (
        "grace",
        Annotated[float, Opt("--grace", help="Seconds a swapped-out version stays open for requests in flight.")],
        30.0,
    ),
]

# What a request may ask for, and whether the probes need the token too.
_LIMITS: Params = [
    (
        "protect_probes",
        Annotated[bool, Opt("--protect-probes", help="Require the token for /livez, /readyz and /metrics too.")],
        False,
    ),
    ("max_k", Annotated[int, Opt("--max-k", help="Largest k (and fusion depth) a request may ask for.")], 1000),
    (
        "max_batch_queries",
        Annotated[int, Opt("--max-batch-queries", help="Most queries in one /search/batch request.")],
        256,
    ),
]


@handle_errors
@backend_options
@option_group(_ENGINE, "engine", dict)
@option_group(_LIMITS, "limits", dict)
def serve(
    index: IndexOpt,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    workers: WorkersOpt = 1,
    *,
    engine: dict[str, Any],
    api_key_file: ApiKeyFileOpt = None,
    limits: dict[str, Any],
    access_log: AccessLogOpt = True,
    conn: BackendOptions = BackendOptions(),
) -> None:
    """Serve BM25, dense and hybrid search over HTTP (OpenAPI at /api-docs), following index swaps."""
    _check_ranges({"port": port, "workers": workers, **engine, **limits})
    settings: dict[str, Any] = {
        "index": index,
        "conn": conn.to_json(),
        "engine": {
            "max_batch": engine["max_batch"],
            "max_wait_ms": engine["max_wait_ms"],
            "workers": engine["batch_threads"],
            "poll_s": engine["poll"],
            "grace_s": engine["grace"],
        },
        "limits": {
            "max_k": limits["max_k"],
            "max_batch": limits["max_batch_queries"],
            "protect_probes": limits["protect_probes"],
        },
        "api_key_file": str(api_key_file) if api_key_file else None,
    }
    if api_key_file is not None:
        _read_key(api_key_file)  # fail here, once, with a clear message
    server = {"host": host, "port": port, "log_config": _log_config(access_log), "access_log": access_log}
    _check_index(conn, settings["index"])
    if workers == 1:
        _serve_in_process(settings, server)
    else:
        _serve_workers(settings, workers, server)


def _check_index(conn: BackendOptions, index: str) -> None:
    """Fail with the backend's own message (where it looked, how to create the index)."""
    backend = conn.open()
    try:
        if backend.current(index) is None:
            backend.info(index)  # raises the usual "not found; create it with ..." error
    finally:
        backend.close()


def _serve_in_process(settings: dict[str, Any], server: dict[str, Any]) -> None:
    """One process: the engine starts (and fails, if it must) before the port opens."""
    import uvicorn

    # uvicorn stops gracefully on SIGTERM, then raises it again; by default that would end
    # the process there, skipping the engine's close and the exit handlers (the JVM's
    # class-sharing archive is written by one): exit normally instead. (With --workers,
    # uvicorn's supervisor returns normally; each worker closes its engine at shutdown.)
    signal.signal(signal.SIGTERM, _stop)
    engine = _engine(settings)
    try:
        engine.start()  # errors surface as one line before the port opens
        err_console.print(
            f"serving '{settings['index']}' ({engine.generation.version if engine.generation else '?'}) on "
            f"http://{server['host']}:{server['port']} (OpenAPI: /api-docs)",
            markup=False,
            highlight=False,
        )
        uvicorn.run(_app(settings, engine), **server)
    finally:
        engine.close()


def _serve_workers(settings: dict[str, Any], workers: int, server: dict[str, Any]) -> None:
    """Several uvicorn worker processes, each building its engine from ``settings``, handed over
    in a file only this user can read."""
    import uvicorn

    fd, path = tempfile.mkstemp(prefix="hybrid-serve-", suffix=".json")  # created 0600
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(settings, out)
        os.environ[_WORKER_ENV] = path
        err_console.print(
            f"serving '{settings['index']}' on http://{server['host']}:{server['port']} with {workers} workers",
            markup=False,
        )
        uvicorn.run("hybrid.cli.serve:worker_app", factory=True, workers=workers, **server)
    finally:
        os.environ.pop(_WORKER_ENV, None)
        Path(path).unlink(missing_ok=True)


# (lowest, highest) of each option; the float ones must be finite too
_RANGES: dict[str, tuple[float, float]] = {
    "--port": (0, 65535),  # 0: any free port
    "--workers": (1, 256),
    "--max-batch": (1, 4096),
    "--batch-threads": (1, 256),
    "--max-k": (1, 1000),
    "--max-batch-queries": (1, 100_000),
    "--max-wait-ms": (0, 10_000),
    "--poll": (0.01, 86_400),
    "--grace": (0, 86_400),
}


def _check_ranges(values: dict[str, float]) -> None:
    """One line naming the first option outside its range (or not a finite number); ``values``
    are named as the command's parameters (``max_batch`` for ``--max-batch``)."""
    for option, (low, high) in _RANGES.items():
        value = values[option[2:].replace("-", "_")]
        if not math.isfinite(value) or not low <= value <= high:
            raise ConfigError(f"{option} must be between {low:g} and {high:g}, got {value:g}")


def _stop(signum: int, frame: object) -> None:
    if _stopping.is_set():
        return  # a second SIGTERM would cut the engine's close short
    _stopping.set()
    raise SystemExit(0)


def worker_app() -> Any:
    """Application factory for each uvicorn worker process (``--workers`` > 1)."""
    settings = json.loads(Path(os.environ[_WORKER_ENV]).read_text())
    from hybrid.serving.app import create_app

    return create_app(_engine(settings), _limits(settings), manage_engine=True)


def _app(settings: dict[str, Any], engine: Any) -> Any:
    from hybrid.serving.app import create_app

    return create_app(engine, _limits(settings), manage_engine=False)


def _engine(settings: dict[str, Any]) -> Any:
    from hybrid.serving.engine import Engine

    options = BackendOptions.from_json(settings["conn"])
    return Engine(options.open(), settings["index"], _engine_config(settings["engine"]), owns_backend=True)


def _engine_config(values: dict[str, Any]) -> EngineConfig:
    from hybrid.serving.engine import EngineConfig

    return EngineConfig(**values)


def _limits(settings: dict[str, Any]) -> Any:
    from hybrid.serving.app import ServeLimits

    key = _read_key(Path(settings["api_key_file"])) if settings["api_key_file"] else None
    return ServeLimits(**settings["limits"], api_key=key)


def _read_key(path: Path) -> str:
    try:
        key = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read --api-key-file {path}: {exc.strerror}") from None
    if len(key) < 16:
        raise ConfigError(f"the token in {path} is shorter than 16 characters; use a long random one")
    return key


def _log_config(access_log: bool) -> dict[str, Any]:
    """uvicorn's logging, one line per record, never a request's headers."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["uvicorn.access"]["level"] = "INFO" if access_log else "WARNING"
    return config
