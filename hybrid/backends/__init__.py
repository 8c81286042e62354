"""Search backends behind one protocol (:class:`hybrid.backends.base.Backend`).

``open_backend`` picks Elasticsearch when a cluster config is given, else the embedded
store. Each backend's heavy dependencies load only when that backend is opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hybrid.backends.base import Backend, IndexWriter

if TYPE_CHECKING:
    from hybrid.config import ElasticConfig


def open_backend(es: ElasticConfig | None, store: Path | None, java_home: str | None = None) -> Backend:
    """Elasticsearch when ``es`` is given, else the embedded store under ``store``."""
    if es is not None:
        from hybrid.backends.elastic import ElasticBackend

        return ElasticBackend(es)
    from hybrid.backends.embedded import EmbeddedBackend

    if store is None:
        from hybrid.errors import ConfigError

        raise ConfigError("the embedded backend needs a store directory (--store)")
    return EmbeddedBackend(store, java_home=java_home)


__all__ = ["Backend", "IndexWriter", "open_backend"]
