"""The ASGI middleware in front of every route of the HTTP API: :class:`RequestGuard`."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any

from hybrid.serving import errors
from hybrid.serving.limits import ServeLimits

log = logging.getLogger(__name__)


class RequestGuard:
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
        await self.app(scope, replayed(b"".join(chunks), receive), send)


def replayed(body: bytes, receive: Any) -> Any:
    """An ASGI ``receive`` that gives the buffered ``body`` once, then waits on the client's."""
    sent = False

    async def replay() -> Any:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


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
