"""The HTTP API of ``hybrid serve`` (FastAPI), over one :class:`~hybrid.serving.engine.Engine`.

Endpoints: ``POST /search``, ``POST /search/batch``, ``GET /docs/{id}``, ``GET /livez``,
``GET /readyz``, ``GET /metrics`` (Prometheus); OpenAPI at ``/openapi.json`` and its UI at
``/api-docs`` (``/docs/{id}`` is the document route). Every answer that is not 2xx is JSON
``{"error": ...}`` (:mod:`hybrid.serving.errors` lists the statuses). Every search response
names the index version it searched and the weights hash of the model that embedded its
queries.
"""

# No `from __future__ import annotations`: FastAPI reads the request models declared inside
# create_app from the endpoints' annotations at run time.

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from hybrid.fusion import FusionConfig
from hybrid.search import SearchConfig
from hybrid.serving import errors
from hybrid.serving.engine import Answer, Engine
from hybrid.serving.errors import NotReady, TooLarge
from hybrid.types import Hit

log = logging.getLogger(__name__)

Field = Literal["title", "text"]
MAX_WEIGHT = 1e6  # weights and rrf_k beyond this only overflow fused scores
SCORE_DIGITS = 7  # significant digits of a score in an answer: float noise left out


@dataclass(frozen=True)
class ServeLimits:
    """Request limits and access control."""

    max_k: int = 1000
    max_query_chars: int = 4096
    max_batch: int = 256  # queries in one /search/batch request
    max_body_bytes: int = 1 << 20
    api_key: str | None = None  # bearer token; None: open
    protect_probes: bool = False  # /livez, /readyz and /metrics need the token too
    timeout_s: float = 60.0  # a request waiting longer for its batch fails with 503


def create_app(engine: Engine, limits: ServeLimits | None = None, *, manage_engine: bool = True) -> Any:
    """The FastAPI application; with ``manage_engine`` it starts and closes ``engine``."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from pydantic import AfterValidator, BaseModel, ConfigDict, model_validator
    from pydantic import Field as PField
    from starlette.exceptions import HTTPException

    limits = limits if limits is not None else ServeLimits()
    max_k = limits.max_k
    registry = CollectorRegistry()
    requests_total = Counter(
        "hybrid_requests", "HTTP requests by route and status", ["route", "status"], registry=registry
    )
    latency = Histogram(
        "hybrid_search_seconds",
        "Search latency by mode (queue, encode, backend and fusion)",
        ["mode"],
        registry=registry,
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    )
    batch_sizes = Histogram(
        "hybrid_batch_queries",
        "Queries per micro-batch sent to the encoder and backend",
        registry=registry,
        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    )
    errors_total = Counter("hybrid_errors", "Failed requests by kind", ["kind"], registry=registry)
    # Elasticsearch only: documents other writers added have no vector until hybrid sync runs.
    without_vector = (
        Gauge(
            "hybrid_documents_without_vector",
            "Documents of the served index without its active vector (hybrid sync embeds them)",
            registry=registry,
        )
        if engine.backend.kind == "elasticsearch"
        else None
    )
    engine._on_batch = batch_sizes.observe  # the engine reports each batch it runs

    class ErrorBody(BaseModel):
        error: str

    class SearchOptions(BaseModel):
        # strict: "5" and true are not a k; no NaN or infinity anywhere
        model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

        mode: Literal["bm25", "dense", "hybrid"] = "hybrid"
        k: int = PField(10, ge=1, le=max_k)
        fusion: Literal["rrf", "linear"] = "rrf"
        rrf_k: float = PField(60.0, ge=0, le=MAX_WEIGHT)
        norm: Literal["minmax", "zscore"] = "minmax"
        bm25_weight: float = PField(0.5, ge=0, le=MAX_WEIGHT)
        dense_weight: float = PField(0.5, ge=0, le=MAX_WEIGHT)
        depth: int = PField(100, ge=1, le=max_k)
        num_candidates: int | None = PField(None, ge=1, le=10_000)
        fields: list[Field] = PField(default_factory=_all_fields)

        @model_validator(mode="after")
        def _some_weight(self) -> "SearchOptions":
            if self.bm25_weight == 0 and self.dense_weight == 0:
                raise ValueError("bm25_weight and dense_weight are both 0: every fused score would be 0")
            return self

        def config(self) -> SearchConfig:
            fusion = FusionConfig(
                method=self.fusion,
                rrf_k=self.rrf_k,
                normalization=self.norm,
                bm25_weight=self.bm25_weight,
                dense_weight=self.dense_weight,
                depth=self.depth,
            )
            return SearchConfig(
                mode=self.mode,
                k=self.k,
                fusion=fusion,
                num_candidates=self.num_candidates,
                texts=bool(self.fields),
            )

    Query = Annotated[str, AfterValidator(_not_blank)]

    class SearchRequest(SearchOptions):
        query: Query

    class BatchRequest(SearchOptions):
        queries: list[Query] = PField(min_length=1)

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        if manage_engine:
            await asyncio.to_thread(engine.start)
        try:
            yield
        finally:
            if manage_engine:
                await asyncio.to_thread(engine.close)

    app = FastAPI(
        title="hybrid",
        summary="BM25, dense and hybrid search over one index",
        lifespan=lifespan,
        docs_url="/api-docs",
        redoc_url=None,
        responses=errors.openapi_responses(ErrorBody),
    )

    def error(status: int, message: str) -> Any:
        return JSONResponse({"error": message}, status_code=status, headers=errors.headers(status))

    app.add_middleware(
        _Guard,
        limits=limits,
        count=lambda route, status: requests_total.labels(route, str(status)).inc(),
        refused=lambda kind: errors_total.labels(kind).inc(),
    )

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> Any:
        errors_total.labels("bad_request").inc()
        return error(*_validation_message(exc.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> Any:  # unknown route, wrong method
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    async def run(queries: list[str], options: SearchOptions) -> tuple[Answer, float]:
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
        latency.labels(options.mode).observe(elapsed)
        return answer, elapsed

    def hit_json(hit: Hit, fields: list[Field]) -> dict[str, Any]:
        row: dict[str, Any] = {"id": hit.id, "score": _rounded(hit.score)}
        if "title" in fields:
            row["title"] = hit.title
        if "text" in fields:
            row["text"] = hit.text
        if hit.sources:
            row["sources"] = {side: _rounded(score) for side, score in hit.sources.items()}
        return row

    def provenance(answer: Answer, elapsed: float) -> dict[str, Any]:
        generation = answer.generation
        return {
            "index": engine.index,
            "version": generation.version,
            "model": generation.model,
            "model_hash": generation.model_hash,
            "query_model_hash": generation.query_hash,
            "took_ms": round(elapsed * 1000, 2),
        }

    # Responses are built as JSONResponse directly: the hits are plain JSON already, and
    # FastAPI's encoder walking every returned dict costs more than the search at small k.
    @app.post("/search", response_model=None)
    async def search(request: SearchRequest) -> JSONResponse:
        """Top-k hits for one query."""
        answer, elapsed = await run([request.query], request)
        hits = [hit_json(h, request.fields) for h in answer.hits[0]]
        return JSONResponse({**provenance(answer, elapsed), "mode": request.mode, "hits": hits})

    @app.post("/search/batch", response_model=None)
    async def search_batch(request: BatchRequest) -> JSONResponse:
        """Top-k hits for each of several queries, in order, from one version."""
        if len(request.queries) > limits.max_batch:
            raise TooLarge(f"{len(request.queries)} queries in one request; the limit is {limits.max_batch}")
        answer, elapsed = await run(request.queries, request)
        results = [{"hits": [hit_json(h, request.fields) for h in row]} for row in answer.hits]
        return JSONResponse({**provenance(answer, elapsed), "mode": request.mode, "results": results})

    @app.get("/docs/{doc_id:path}")
    async def document(doc_id: str) -> Any:
        """One document by id."""
        if engine.generation is None:
            raise NotReady("the index is not loaded yet")
        generation, docs = await asyncio.to_thread(engine.get, [doc_id])
        doc = docs.get(doc_id)
        if doc is None:
            errors_total.labels("not_found").inc()
            return error(404, f"no document with id '{doc_id}' in {generation.version}")
        return {"id": doc.id, "title": doc.title, "text": doc.text, "version": generation.version}

    @app.get("/livez")
    async def livez() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Any:
        """Backend reachable, model loaded, its dimension equal to the index's."""
        generation = engine.generation
        if generation is None:
            return error(503, "the index and its model are not loaded yet")
        if not engine.healthy:
            return error(503, "the search threads have stopped; restart the server")
        try:
            info = await asyncio.to_thread(engine.backend.info, generation.version)
        except Exception as exc:  # unreachable backend or a deleted version: not ready
            return error(503, errors.readiness_problem(exc))
        dims = generation.searcher.encoder.dims
        if dims != info.dims:
            return error(503, f"model makes {dims}-d vectors but {generation.version} holds {info.dims}-d")
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

    @app.get("/metrics")
    async def metrics() -> Any:
        """Prometheus exposition."""
        if without_vector is not None:
            from hybrid.sync import missing_count

            try:
                without_vector.set(await asyncio.to_thread(missing_count, engine.backend, engine.index))
            except Exception as exc:  # the cluster is away: the other metrics still answer
                log.warning("could not count documents without a vector: %s", type(exc).__name__)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


class _Guard:
    """Pure ASGI middleware in front of every route: counts requests by route and status,
    checks the bearer token, and refuses a body over the limit, by its Content-Length or as
    it streams in (a chunked upload has none): the body is buffered up to the limit, then
    replayed. (Starlette's ``@app.middleware("http")`` would cost more per request than a
    small search.)"""

    SEARCH = ("/search", "/search/batch")
    PROBES = ("/livez", "/readyz", "/metrics")
    OPEN = ("/openapi.json", "/api-docs")

    def __init__(
        self, app: Any, limits: ServeLimits, count: Callable[[str, int], None], refused: Callable[[str], None]
    ) -> None:
        self.app = app
        self.limits = limits
        self.count = count
        self.refused = refused
        self.token = limits.api_key.encode() if limits.api_key is not None else None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        known = path in self.SEARCH or path in self.PROBES or path in self.OPEN
        route = path if known else "/docs/{id}" if path.startswith("/docs/") else "other"
        status = 500
        started = False

        async def counted(message: Any) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        try:
            await self._guarded(scope, receive, counted, path)
        except Exception as exc:  # whatever a route raised: one JSON answer, never a traceback
            code, message, kind = errors.classify(exc)
            self.refused(kind)
            if started:  # the answer had started: all that can be done is to log it
                log.error("a response failed after it started", exc_info=exc)
                return
            await _reply(counted, code, message)
        finally:
            self.count(route, status)

    async def _guarded(self, scope: Any, receive: Any, send: Any, path: str) -> None:
        headers = dict(scope["headers"])
        protected = path not in self.OPEN and (path not in self.PROBES or self.limits.protect_probes)
        if self.token is not None and protected:
            scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token, self.token):
                self.refused("unauthorized")
                await _reply(send, 401, "missing or wrong bearer token", [(b"www-authenticate", b"Bearer")])
                return
        limit = self.limits.max_body_bytes
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            self.refused("too_large")
            await _reply(send, 413, f"request body over {limit} bytes")
            return
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > limit:
                self.refused("too_large")
                await _reply(send, 413, f"request body over {limit} bytes")
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _reply(send: Any, status: int, message: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    """A JSON error response sent straight through ASGI."""
    body = errors.body(message)
    retry = [(k.lower().encode(), v.encode()) for k, v in errors.headers(status).items()]
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *retry,
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _all_fields() -> list[Field]:
    return ["title", "text"]


def _not_blank(query: str) -> str:
    if not query.strip():
        raise ValueError("the query is empty or only whitespace")
    return query


def _rounded(score: float) -> float:
    return float(f"{score:.{SCORE_DIGITS}g}")


def _validation_message(problems: Any) -> tuple[int, str]:
    """(status, one line) for a request the models refused: 400 when the body is not JSON,
    else 422 naming the first field at fault."""
    first = problems[0] if problems else {}
    if first.get("type") == "json_invalid":
        return 400, f"the request body is not valid JSON: {first.get('msg', '')}"
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    return 422, f"{where}: {message}" if where else message
