"""Options shared by several commands, error handling and progress drawing."""

from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console

from hybrid.errors import ConfigError, HybridError

if TYPE_CHECKING:
    from hybrid.backends.base import Backend
    from hybrid.config import ElasticConfig

F = TypeVar("F", bound=Callable[..., Any])

console = Console()
err_console = Console(stderr=True)

if TYPE_CHECKING:
    from rich.progress import Progress, ProgressColumn


@contextmanager
def progress_bar(*columns: ProgressColumn | str) -> Iterator[Progress]:
    """A progress bar on stderr, erased if the work fails: the error line then stands
    alone, not under a bar stopped at 0/?."""
    from rich.progress import Progress

    bar = Progress(*columns, console=err_console)
    bar.start()
    try:
        yield bar
    except Exception:
        erase(bar)
        raise
    except BaseException:  # Ctrl-C: the bar stays, showing how far the work got
        bar.stop()
        raise
    bar.stop()


def erase(bar: Progress) -> None:
    """Stop ``bar`` and clear it from the terminal (off one, print nothing more)."""
    bar.live.transient = True
    bar.live.stop()  # not bar.stop(): off a terminal that adds an empty line


def default_store() -> Path:
    """Where the embedded backend keeps indexes when --store is not given."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "hybrid"


# Writers keep a swapped-out version this long: a running `hybrid serve` needs the time to
# load (and export) the new version's model before it can switch to it.
DEFAULT_GRACE_S = 120.0


def say_grace(grace: float) -> None:
    """Tell the user why a writer has not exited yet."""
    err_console.print(
        f"keeping the previous version {grace:g} s (--grace) so servers can switch to the new one, then "
        "deleting it; --grace 0 deletes at once",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


IndexOpt = Annotated[str, typer.Option("--index", "-i", help="Index name (an alias on Elasticsearch).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
# Writers' --grace (index, train); serve's --grace is another thing: how long it keeps a version open.
GraceOpt = Annotated[
    float,
    typer.Option(
        "--grace",
        envvar="HYBRID_GRACE",
        help="Keep each swapped-out version this many seconds, so a running hybrid serve can load "
        "the new model and switch before it is deleted (0: at once; the command waits for it to exit).",
    ),
]
QueryModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="Query encoder (default: the index's model).")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:1 … (default: cuda when present).")]
EncodeBatchOpt = Annotated[int, typer.Option("--encode-batch", help="Passages per forward pass.")]
NumCandidatesOpt = Annotated[
    int | None, typer.Option("--num-candidates", help="kNN candidates (ES num_candidates / HNSW efSearch).")
]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="Index at most this many documents.")]


@dataclass(frozen=True)
class BackendOptions:
    """Where the index lives: an Elasticsearch cluster (``es_url``) or the embedded store."""

    es_url: str | None = None
    es_api_key: str | None = field(default=None, repr=False)
    es_user: str | None = None
    es_password: str | None = field(default=None, repr=False)
    es_ca_certs: Path | None = None
    es_timeout: float = 120.0
    store: Path | None = None
    es_api_key_file: Path | None = None
    es_password_file: Path | None = None
    es_verify_certs: bool = True
    es_ssl_fingerprint: str | None = None
    es_client_cert: Path | None = None
    es_client_key: Path | None = None

    def es_config(self) -> ElasticConfig | None:
        """An :class:`ElasticConfig` when a URL is given, else ``None`` (embedded store)."""
        if not self.es_url:
            return None
        from hybrid.config import ElasticConfig

        api_key = _secret(self.es_api_key, self.es_api_key_file, "--es-api-key")
        password = _secret(self.es_password, self.es_password_file, "--es-password")
        return ElasticConfig(
            url=self.es_url,
            api_key=api_key,
            username=self.es_user,
            password=password,
            ca_certs=self.es_ca_certs,
            verify_certs=self.es_verify_certs,
            ssl_fingerprint=self.es_ssl_fingerprint,
            client_cert=self.es_client_cert,
            client_key=self.es_client_key,
            request_timeout=self.es_timeout,
        )

    def to_json(self) -> dict[str, Any]:
        """The options as JSON values (paths as strings), for a worker process to rebuild."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> BackendOptions:
        """The options :meth:`to_json` wrote: every path option becomes a ``Path`` again, so a
        secret read from a file (``--es-password-file``) works in a worker as in the parent."""
        hints = typing.get_type_hints(cls)
        paths = {k for k, hint in hints.items() if Path in typing.get_args(hint) or hint is Path}
        converted: dict[str, Any] = {k: Path(v) if k in paths and v is not None else v for k, v in values.items()}
        return cls(**converted)

    def open(self) -> Backend:
        """Open the chosen backend; the embedded one finds Java 21+ starting from JAVA_HOME."""
        from hybrid.backends import open_backend

        return open_backend(self.es_config(), self.store or default_store(), java_home=os.environ.get("JAVA_HOME"))


def _secret(value: str | None, path: Path | None, option: str) -> str | None:
    """A secret given directly (env) or read from ``path`` (its first line); not both."""
    if path is None:
        return value
    if value is not None:
        raise ConfigError(f"give {option} or {option}-file, not both")
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read {option}-file {path}: {exc.strerror}") from None
    if not lines or not lines[0].strip():
        raise ConfigError(f"{option}-file {path} is empty")
    return lines[0].strip()


_BACKEND_PARAMS: list[tuple[str, Any, Any]] = [
    (
        "es_url",
        Annotated[
            str | None,
            typer.Option(
                "--es-url",
                envvar="HYBRID_ES_URL",
                help="Elasticsearch URL (several nodes: comma-separated); without it the embedded store is used.",
            ),
        ],
        None,
    ),
    (
        "es_api_key",
        Annotated[
            str | None, typer.Option("--es-api-key", envvar="HYBRID_ES_API_KEY", help="Elasticsearch API key (base64).")
        ],
        None,
    ),
    (
        "es_user",
        Annotated[str | None, typer.Option("--es-user", envvar="HYBRID_ES_USER", help="Basic-auth user.")],
        None,
    ),
    (
        "es_password",
        Annotated[str | None, typer.Option("--es-password", envvar="HYBRID_ES_PASSWORD", help="Basic-auth password.")],
        None,
    ),
    (
        "es_ca_certs",
        Annotated[
            Path | None, typer.Option("--es-ca-certs", envvar="HYBRID_ES_CA_CERTS", help="CA certificate bundle (PEM).")
        ],
        None,
    ),
    (
        "es_timeout",
        Annotated[float, typer.Option("--es-timeout", envvar="HYBRID_ES_TIMEOUT", help="Request timeout in seconds.")],
        120.0,
    ),
    (
        "es_api_key_file",
        Annotated[
            Path | None,
            typer.Option(
                "--es-api-key-file", envvar="HYBRID_ES_API_KEY_FILE", help="File holding the API key (not in ps)."
            ),
        ],
        None,
    ),
    (
        "es_password_file",
        Annotated[
            Path | None,
            typer.Option(
                "--es-password-file",
                envvar="HYBRID_ES_PASSWORD_FILE",
                help="File holding the password (kept out of ps).",
            ),
        ],
        None,
    ),
    (
        "es_verify_certs",
        Annotated[
            bool,
            typer.Option(
                "--es-verify-certs/--no-es-verify-certs",
                envvar="HYBRID_ES_VERIFY_CERTS",
                help="Verify the cluster's TLS certificate (on; turning it off allows man-in-the-middle attacks).",
            ),
        ],
        True,
    ),
    (
        "es_ssl_fingerprint",
        Annotated[
            str | None,
            typer.Option(
                "--es-ssl-fingerprint",
                envvar="HYBRID_ES_SSL_FINGERPRINT",
                help="SHA-256 fingerprint of the cluster's certificate (instead of --es-ca-certs).",
            ),
        ],
        None,
    ),
    (
        "es_client_cert",
        Annotated[
            Path | None,
            typer.Option("--es-client-cert", envvar="HYBRID_ES_CLIENT_CERT", help="Client certificate (PEM)."),
        ],
        None,
    ),
    (
        "es_client_key",
        Annotated[
            Path | None,
            typer.Option("--es-client-key", envvar="HYBRID_ES_CLIENT_KEY", help="Client certificate's key (PEM)."),
        ],
        None,
    ),
    (
        "store",
        Annotated[
            Path | None,
            typer.Option(
                "--store", envvar="HYBRID_STORE", help="Embedded store directory (default: ~/.local/share/hybrid)."
            ),
        ],
        None,
    ),
]


Params = list[tuple[str, Any, Any]]  # (name, annotation, default) of each option in a group


def option_group(params: Params, into: str, build: Callable[[dict[str, Any]], Any]) -> Callable[[F], F]:
    """Give a command a group of options declared once, in ``params`` (name, annotation, default).

    The command declares one parameter named ``into``; Typer sees the group's options in its
    place, and the command receives ``build`` of their values.
    """

    def decorate(func: F) -> F:
        signature = inspect.signature(func, eval_str=True)
        group = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a) for n, a, d in params]
        parameters: list[inspect.Parameter] = []
        for name, parameter in signature.parameters.items():  # Typer passes every option by keyword
            parameters += group if name == into else [parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY)]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name, _, _ in params}
            return func(*args, **{into: build(values)}, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        return wrapper  # type: ignore[return-value]

    return decorate


def _backend(values: dict[str, Any]) -> BackendOptions:
    """The ``--es-*``/``--store`` values gathered, with a warning for each unsafe choice."""
    options = BackendOptions(**values)
    if not options.es_verify_certs and options.es_url:
        err_console.print(
            "WARNING: --no-es-verify-certs: the cluster's identity is NOT checked; anyone on the network "
            "path can read and change this traffic, credentials included.",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    for flag in ("--es-password", "--es-api-key"):
        if any(a == flag or a.startswith(flag + "=") for a in sys.argv[1:]):
            err_console.print(
                f"Warning: {flag} on the command line is visible to other users (ps, shell history); "
                f"use {flag}-file or the environment instead.",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
    return options


# Give a command the shared ``--es-*`` and ``--store`` options: it declares a
# ``conn: BackendOptions`` parameter and receives them gathered into one object.
backend_options = option_group(_BACKEND_PARAMS, "conn", _backend)


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
        except Exception as exc:
            line = _elastic_error(exc)
            if line is None:
                raise
            err_console.print(f"Error: {line}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _elastic_error(exc: Exception) -> str | None:
    """One line for an error the Elasticsearch client raised (a refused privilege, an HTTP
    error, no node reachable), else ``None``."""
    if "elasticsearch" not in sys.modules:  # never loaded: not the client's error
        return None
    import elastic_transport
    import elasticsearch

    from hybrid.backends.es_bulk import reason

    if isinstance(exc, elasticsearch.ApiError):
        body = exc.body
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(exc, elasticsearch.AuthorizationException):
            why = reason(error) if error else "HTTP 403 (no detail given)"
            return f"Elasticsearch refused the request, the API key or user lacks a privilege: {why}"
        return f"Elasticsearch answered HTTP {exc.meta.status}: {reason(error) if error else exc.message}"
    if isinstance(exc, elastic_transport.TransportError):
        kind = type(exc).__name__
        return f"Elasticsearch could not be reached ({kind}): {exc.message}; check --es-url and that the cluster is up"
    return None


def setup_logging(verbose: bool = False) -> None:
    """Library logs go to stderr: warnings by default, debug detail with --verbose."""
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # Transport retries log warnings with whole tracebacks before hybrid's own one-line error
    # says what to fix: shown with --verbose only.
    for noisy in ("elastic_transport", "urllib3", "httpx", "elasticsearch"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.CRITICAL)
