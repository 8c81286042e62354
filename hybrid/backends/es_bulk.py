"""Bulk writes to Elasticsearch with back-off on 429s and one clear error for rejections."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from hybrid.errors import BackendError

BULK_CHUNK = 200  # vectors make documents large: keep bulk requests a few MB


def bulk_write(
    client: Any,
    timeout: float,
    actions: Iterable[dict[str, Any]],
    total: int,
    target: str,
    missing: Callable[[str], None] | None = None,
) -> int:
    """Send ``actions`` in chunks (retrying 429s with back-off); returns how many succeeded.

    Raises BackendError naming the first rejected document when any was rejected. With
    ``missing``, an update of a document that no longer exists (deleted meanwhile by the
    index's application) is reported to it instead.
    """
    from elasticsearch import helpers

    errors: list[dict[str, Any]] = []
    written = 0
    for ok, item in helpers.streaming_bulk(
        client.options(request_timeout=timeout),
        actions,
        chunk_size=BULK_CHUNK,
        max_chunk_bytes=20 * 1024 * 1024,
        raise_on_error=False,
        raise_on_exception=True,
        max_retries=8,
        initial_backoff=1.0,
        max_backoff=60.0,
    ):
        if ok:
            written += 1
            continue
        result = next(iter(item.values()))
        if missing is not None and result.get("status") == 404:
            missing(str(result.get("_id")))
        else:
            errors.append(item)
    if errors:
        first = next(iter(errors[0].values()))
        raise BackendError(
            f"{len(errors)} of {total} documents were rejected by '{target}'; "
            f"first: id {first.get('_id')}: {reason(first.get('error', {}))}"
        )
    return written


def reason(error: Any) -> str:
    """The reason of an ES error object, with its causes, or its text."""
    if isinstance(error, dict):
        cause = error.get("caused_by")
        text = str(error.get("reason") or error.get("type") or error)
        return f"{text} ({reason(cause)})" if cause else text
    return str(error)
