"""What one request to the HTTP API may ask for, and who may ask: :class:`ServeLimits`."""

from __future__ import annotations

from dataclasses import dataclass


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
