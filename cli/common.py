"""Options shared by several commands, error handling and progress drawing."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console

from hybrid.errors import HybridError

if TYPE_CHECKING:
    from hybrid.backends.base import Backend
    from hybrid.config import ElasticConfig

F = TypeVar("F", bound=Callable[..., Any])

console = Console()
err_console = Console(stderr=True)


def default_store() -> Path:
    """Where the embedded backend keeps indexes when --store is not given."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "hybrid"


IndexOpt = Annotated[str, typer.Option("--index", "-i", help="Index name (an alias on Elasticsearch).")]
EsUrlOpt = Annotated[
    str | None,
    typer.Option("--es-url", envvar="HYBRID_ES_URL", help="Elasticsearch URL; without it the embedded store is used."),
]
EsApiKeyOpt = Annotated[
    str | None, typer.Option("--es-api-key", envvar="HYBRID_ES_API_KEY", help="Elasticsearch API key (base64).")
]
EsUserOpt = Annotated[str | None, typer.Option("--es-user", envvar="HYBRID_ES_USER", help="Basic-auth user.")]
EsPasswordOpt = Annotated[
    str | None, typer.Option("--es-password", envvar="HYBRID_ES_PASSWORD", help="Basic-auth password.")
]
EsCaOpt = Annotated[
    Path | None, typer.Option("--es-ca-certs", envvar="HYBRID_ES_CA_CERTS", help="CA certificate bundle (PEM).")
]
EsTimeoutOpt = Annotated[
    float, typer.Option("--es-timeout", envvar="HYBRID_ES_TIMEOUT", help="Request timeout in seconds.")
]
StoreOpt = Annotated[
    Path | None,
    typer.Option("--store", envvar="HYBRID_STORE", help="Embedded store directory [default: ~/.local/share/hybrid]."),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def es_config(
    url: str | None, api_key: str | None, user: str | None, password: str | None, ca: Path | None, timeout: float
) -> ElasticConfig | None:
    """An :class:`ElasticConfig` when a URL is given, else ``None`` (embedded store)."""
    if not url:
        return None
    from hybrid.config import ElasticConfig

    return ElasticConfig(
        url=url, api_key=api_key, username=user, password=password, ca_certs=ca, request_timeout=timeout
    )


def backend_for(es: ElasticConfig | None, store: Path | None) -> Backend:
    """Open the chosen backend; the embedded one finds Java 21+ starting from JAVA_HOME."""
    from hybrid.backends import open_backend

    return open_backend(es, store or default_store(), java_home=os.environ.get("JAVA_HOME"))


def handle_errors(func: F) -> F:
    """Turn library errors into one ``Error: …`` line on stderr and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except HybridError as exc:
            err_console.print(f"Error: {exc}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("Interrupted; re-run the same command to resume.", markup=False)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def setup_logging(verbose: bool = False) -> None:
    """Library logs go to stderr: warnings by default, debug detail with --verbose."""
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("elastic_transport", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
