"""The HTTP API's routes and error handlers, over one :class:`~hybrid.serving.engine.Engine`.

Each ``add_*`` function registers its routes on a FastAPI app; :func:`hybrid.serving.app.create_app`
calls them in the order OpenAPI lists the paths.
"""

# No `from __future__ import annotations`: FastAPI reads each endpoint's request model from
# its annotation at run time, and those models are made per app (schemas.request_models).

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from hybrid.serving import errors
from hybrid.serving.engine import Answer, Engine
from hybrid.serving.errors import NotReady, TooLarge
from hybrid.serving.limits import ServeLimits
from hybrid.serving.metrics import CONTENT_TYPE, Metrics
from hybrid.serving.middleware import replayed
from hybrid.serving.schemas import BatchRequest, Field, SearchOptions, SearchRequest
from hybrid.types import Hit

SCORE_DIGITS = 7  # significant digits of a score in an answer: float noise left out


def add_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Requests the models refuse, unknown routes and wrong methods answer JSON ``{"error": ...}``."""

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> Any:
        metrics.error("bad_request")
        return _error(*_validation_message(exc.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> Any:  # unknown route, wrong method
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


def add_search_routes(
    app: FastAPI, engine: Engine, limits: ServeLimits, metrics: Metrics, models: tuple[type[Any], type[Any]]
) -> None:
    """``POST /search`` and ``POST /search/batch``, as OpenAPI documents them, validated by
    ``models`` (the app's, from :func:`~hybrid.serving.schemas.request_models`); a valid JSON
    body is answered by :class:`SearchPath` in front of the app, anything else here."""
    SearchModel, BatchModel = models

    # Each endpoint is annotated with its app's own model (FastAPI validates and documents
    # requests by it), which mypy cannot take for a type: the work is in typed functions.
    @app.post("/search", response_model=None)
    async def search(request: SearchModel) -> JSONResponse:  # type: ignore[valid-type]
        """Top-k hits for one query."""
        return await _search(engine, limits, metrics, request)

    @app.post("/search/batch", response_model=None)
    async def search_batch(request: BatchModel) -> JSONResponse:  # type: ignore[valid-type]
        """Top-k hits for each of several queries, in order, from one version."""
        return await _search_batch(engine, limits, metrics, request)


class SearchPath:
    """ASGI middleware answering a valid ``POST /search`` or ``POST /search/batch`` with a
    JSON body itself, with the routes' models and answers, without the router and FastAPI's
    request handling: on a loaded server those were a measurable share of a small search's
    CPU. A body that is not a valid request goes on to the routes, which answer its error as
    ever, and so do other content types, methods and paths. It sits inside
    :class:`~hybrid.serving.middleware.RequestGuard`, so every request is still checked and
    counted first."""

    def __init__(
        self, app: Any, engine: Engine, limits: ServeLimits, metrics: Metrics, models: tuple[type[Any], type[Any]]
    ) -> None:
        self.app = app
        self.engine, self.limits, self.metrics = engine, limits, metrics
        search, batch = models  # the routes' own
        self.routes: dict[str, tuple[type[SearchOptions], Callable[..., Awaitable[JSONResponse]]]] = {
            "/search": (search, _search),
            "/search/batch": (batch, _search_batch),
        }

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None or not _json_content(scope["headers"]):
            await self.app(scope, receive, send)
            return
        model, answer = route
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        # Parsed as the routes parse it (Python's json, then the model), so the same bodies
        # pass: pydantic's own parser would refuse a lone surrogate escape the routes accept.
        try:
            request = model.model_validate(json.loads(body))
        except ValueError:  # not JSON, or not a valid request: the routes answer it, as ever
            await self.app(scope, replayed(body, receive), send)
            return
        response = await answer(self.engine, self.limits, self.metrics, request)
        await response(scope, receive, send)


def _json_content(headers: list[tuple[bytes, bytes]]) -> bool:
    """The request says its body is JSON (``application/json``, any parameters)."""
    for name, value in headers:
        if name == b"content-type":
            return value.partition(b";")[0].strip().lower() == b"application/json"
    return False


def add_document_route(app: FastAPI, engine: Engine, metrics: Metrics) -> None:
    """``GET /docs/{id}``."""

    @app.get("/docs/{doc_id:path}")
    async def document(doc_id: str) -> Any:
        """One document by id."""
        if engine.generation is None:
            raise NotReady("the index is not loaded yet")
        generation, docs = await asyncio.to_thread(engine.get, [doc_id])
        doc = docs.get(doc_id)
        if doc is None:
            metrics.error("not_found")
            return _error(404, f"no document with id '{doc_id}' in {generation.version}")
        return {"id": doc.id, "title": doc.title, "text": doc.text, "version": generation.version}


def add_probe_routes(app: FastAPI, engine: Engine, metrics: Metrics) -> None:
    """``GET /livez``, ``GET /readyz`` and ``GET /metrics``."""

    @app.get("/livez")
    async def livez() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Any:
        """Backend reachable, model loaded, its dimension equal to the index's."""
        return await _readiness(engine)

    # ``metrics`` names the registry here; the route keeps that name (its OpenAPI operation id)
    @app.get("/metrics", name="metrics")
    async def exposition() -> Any:
        """Prometheus exposition."""
        return Response(await metrics.exposition(), media_type=CONTENT_TYPE)


# Responses are built as JSONResponse directly: the hits are plain JSON already, and
# FastAPI's encoder walking every returned dict costs more than the search at small k.
async def _search(engine: Engine, limits: ServeLimits, metrics: Metrics, request: SearchRequest) -> JSONResponse:
    answer, elapsed = await _answer(engine, limits, metrics, [request.query], request)
    hits = [_hit_json(h, request.fields) for h in answer.hits[0]]
    return JSONResponse({**_provenance(engine, answer, elapsed), "mode": request.mode, "hits": hits})


async def _search_batch(engine: Engine, limits: ServeLimits, metrics: Metrics, request: BatchRequest) -> JSONResponse:
    if len(request.queries) > limits.max_batch:
        raise TooLarge(f"{len(request.queries)} queries in one request; the limit is {limits.max_batch}")
    answer, elapsed = await _answer(engine, limits, metrics, request.queries, request)
    results = [{"hits": [_hit_json(h, request.fields) for h in row]} for row in answer.hits]
    return JSONResponse({**_provenance(engine, answer, elapsed), "mode": request.mode, "results": results})


async def _answer(
    engine: Engine, limits: ServeLimits, metrics: Metrics, queries: list[str], options: SearchOptions
) -> tuple[Answer, float]:
    """The engine's answer to ``queries`` and the seconds it took (queue, encode, backend, fusion)."""
    too_long = next((q for q in queries if len(q) > limits.max_query_chars), None)
    if too_long is not None:
        raise TooLarge(f"a query is {len(too_long)} characters; the limit is {limits.max_query_chars}")
    if engine.generation is None:
        raise NotReady("the index is not loaded yet")
    config = options.config()
    start = time.perf_counter()
    future = engine.submit(queries, config)
    try:
        answer = await asyncio.wait_for(asyncio.wrap_future(future), limits.timeout_s)
    except TimeoutError:
        raise NotReady(f"no answer within {limits.timeout_s:g} s; the server is overloaded") from None
    elapsed = time.perf_counter() - start
    metrics.search(options.mode, elapsed)
    return answer, elapsed


def _hit_json(hit: Hit, fields: list[Field]) -> dict[str, Any]:
    row: dict[str, Any] = {"id": hit.id, "score": _rounded(hit.score)}
    if "title" in fields:
        row["title"] = hit.title
    if "text" in fields:
        row["text"] = hit.text
    if hit.sources:
        row["sources"] = {side: _rounded(score) for side, score in hit.sources.items()}
    return row


def _provenance(engine: Engine, answer: Answer, elapsed: float) -> dict[str, Any]:
    """What every search answer names: the index version searched and the models' hashes."""
    generation = answer.generation
    return {
        "index": engine.index,
        "version": generation.version,
        "model": generation.model,
        "model_hash": generation.model_hash,
        "query_model_hash": generation.query_hash,
        "took_ms": round(elapsed * 1000, 2),
    }


async def _readiness(engine: Engine) -> Any:
    """The /readyz answer: the generation in use, or 503 saying why there is none to use."""
    generation = engine.generation
    if generation is None:
        return _error(503, "the index and its model are not loaded yet")
    if not engine.healthy:
        return _error(503, "the search threads have stopped; restart the server")
    try:
        info = await asyncio.to_thread(engine.backend.info, generation.version)
    except Exception as exc:  # unreachable backend or a deleted version: not ready
        return _error(503, errors.readiness_problem(exc))
    dims = generation.searcher.encoder.dims
    if dims != info.dims:
        return _error(503, f"model makes {dims}-d vectors but {generation.version} holds {info.dims}-d")
    body = {
        "status": "ready",
        "index": engine.index,
        "version": generation.version,
        "model": generation.model,
        "model_hash": generation.model_hash,
        "query_model_hash": generation.query_hash,
        "dims": dims,
        "count": info.count,
    }
    if engine.last_error:
        body["warning"] = engine.last_error
    return body


def _error(status: int, message: str) -> Any:
    return JSONResponse({"error": message}, status_code=status, headers=errors.headers(status))


def _rounded(score: float) -> float:
    return float(f"{score:.{SCORE_DIGITS}g}")


def _validation_message(problems: Any) -> tuple[int, str]:
    """(status, one line) for a request the models refused: 400 when the body is not JSON,
    else 422 naming the first field at fault."""
    first = problems[0] if problems else {}
    if tuple(first.get("loc", ())) == ("body",) and first.get("type") in ("model_attributes_type", "model_type"):
        # a form post (curl -d without a content type) or a JSON array, string or null
        return 422, "the request body must be a JSON object, sent with Content-Type: application/json"
    if first.get("type") == "json_invalid":
        return 400, f"the request body is not valid JSON: {first.get('msg', '')}"
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    return 422, f"{where}: {message}" if where else message
