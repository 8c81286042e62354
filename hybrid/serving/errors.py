"""The HTTP API's one error contract: every answer that is not 2xx is JSON ``{"error": ...}``.

400 the body is not JSON; 401 the bearer token; 404 no such document or route; 405 a
method the route does not take; 413 a request over a limit; 422 a parameter of the wrong
type or out of range (the message names it); 503 not ready or the backend unreachable, with
``Retry-After``; 500 anything else. A client never sees a traceback or an exception's chain:
the server log has those.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from hybrid.errors import BackendError, ConfigError, HybridError, IndexNotFoundError

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5  # how long a client should wait before asking again after a 503

UNREACHABLE = "the search backend is not reachable or failing; retry shortly (the server log has the detail)"


class TooLarge(Exception):
    """413: a query or a batch over the server's limits."""


class NotReady(Exception):
    """503: the index is not loaded yet, or an answer took too long."""


def headers(status: int) -> dict[str, str]:
    """Extra headers of an error answer: ``Retry-After`` on 503."""
    return {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else {}


def body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def classify(exc: BaseException) -> tuple[int, str, str]:
    """(status, message for the client, metric kind) of an exception raised while answering.

    Only hybrid's own messages reach the client; anything else is logged with its traceback
    and answered with a fixed sentence."""
    if isinstance(exc, TooLarge):
        return 413, str(exc), "too_large"
    if isinstance(exc, NotReady):
        return 503, str(exc), "not_ready"
    if isinstance(exc, ConfigError):
        return 422, str(exc), "bad_request"
    if isinstance(exc, IndexNotFoundError):
        return 503, str(exc), "backend"
    if isinstance(exc, BackendError) or _backend_unavailable(exc):
        log.warning("the backend failed: %s: %s", type(exc).__name__, exc)
        return 503, UNREACHABLE, "backend"
    if isinstance(exc, HybridError):
        return 503, str(exc).splitlines()[0], "backend"
    log.error("answering a request failed", exc_info=exc)
    return 500, "internal error; the server log has the detail", "internal"


def _backend_unavailable(exc: BaseException) -> bool:
    """The Elasticsearch client could not reach a node, or the cluster is overloaded or failing."""
    transport, client = sys.modules.get("elastic_transport"), sys.modules.get("elasticsearch")
    if transport is None or client is None:  # never loaded: not the client's error
        return False
    if isinstance(exc, transport.TransportError):
        return True
    status = getattr(getattr(exc, "meta", None), "status", None)
    return isinstance(exc, client.ApiError) and isinstance(status, int) and (status == 429 or status >= 500)


def readiness_problem(exc: BaseException) -> str:
    """What /readyz says when checking the backend raised ``exc`` (logged in full here)."""
    if isinstance(exc, IndexNotFoundError):
        return str(exc)
    log.warning("readiness check failed: %s: %s", type(exc).__name__, exc)
    return UNREACHABLE


def openapi_responses(error_model: Any) -> dict[int | str, dict[str, Any]]:
    """The error answers as OpenAPI documents them, for every route."""
    retry = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}
    described = {
        400: "the body is not valid JSON",
        401: "missing or wrong bearer token",
        404: "no such document or route",
        405: "method not allowed on this route",
        413: "request body, a query or a batch over the server's limits",
        422: "a parameter of the wrong type or out of range; the message names it",
        500: "internal error (details only in the server log)",
        503: "not ready, overloaded or the backend unreachable",
    }
    responses: dict[int | str, dict[str, Any]] = {
        status: {"model": error_model, "description": text} for status, text in described.items()
    }
    responses[503]["headers"] = retry
    return responses
