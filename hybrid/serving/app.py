"""The HTTP API of ``hybrid serve`` (FastAPI), over one :class:`~hybrid.serving.engine.Engine`.

Endpoints: ``POST /search``, ``POST /search/batch``, ``GET /docs/{id}``, ``GET /livez``,
``GET /readyz``, ``GET /metrics`` (Prometheus); OpenAPI at ``/openapi.json`` and its UI at
``/api-docs`` (``/docs/{id}`` is the document route). Every answer that is not 2xx is JSON
``{"error": ...}`` (:mod:`hybrid.serving.errors` lists the statuses). Every search response
names the index version it searched and the weights hash of the model that embedded its
queries.

:func:`create_app` assembles the parts: request models (:mod:`~hybrid.serving.schemas`),
routes (:mod:`~hybrid.serving.routes`), metrics (:mod:`~hybrid.serving.metrics`) and the
middleware that checks every request first (:mod:`~hybrid.serving.middleware`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from hybrid.serving.engine import Engine
from hybrid.serving.limits import ServeLimits


def create_app(engine: Engine, limits: ServeLimits | None = None, *, manage_engine: bool = True) -> Any:
    """The FastAPI application; with ``manage_engine`` it starts and closes ``engine``."""
    # FastAPI, pydantic and prometheus_client load when an app is made, not with ServeLimits.
    from fastapi import FastAPI

    from hybrid.serving import errors, routes
    from hybrid.serving.metrics import Metrics
    from hybrid.serving.middleware import RequestGuard
    from hybrid.serving.schemas import ErrorBody, request_models

    limits = limits if limits is not None else ServeLimits()
    metrics = Metrics(engine.backend, engine.index)
    engine.set_on_batch(metrics.batch)  # the engine reports each batch it runs
    app = FastAPI(
        title="hybrid",
        summary="BM25, dense and hybrid search over one index",
        lifespan=_lifespan(engine, manage_engine),
        docs_url="/api-docs",
        redoc_url=None,
        responses=errors.openapi_responses(ErrorBody),
    )
    # The last added runs first: the guard checks and counts every request, then the
    # search path answers JSON searches before the router.
    models = request_models(limits.max_k)  # one pair per app, for the routes and the search path
    app.add_middleware(routes.SearchPath, engine=engine, limits=limits, metrics=metrics, models=models)
    app.add_middleware(RequestGuard, limits=limits, count=metrics.request, refused=metrics.error)
    routes.add_error_handlers(app, metrics)
    routes.add_search_routes(app, engine, limits, metrics, models)
    routes.add_document_route(app, engine, metrics)
    routes.add_probe_routes(app, engine, metrics)
    return app


def _lifespan(engine: Engine, manage_engine: bool) -> Any:
    """The app's lifespan: starts ``engine`` before the first request and closes it after
    the last, when the app manages it."""

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        if manage_engine:
            await asyncio.to_thread(engine.start)
        try:
            yield
        finally:
            if manage_engine:
                await asyncio.to_thread(engine.close)

    return lifespan


__all__ = ["ServeLimits", "create_app"]
