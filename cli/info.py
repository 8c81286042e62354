"""``hybrid info``: what an index holds."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from .common import (
    EsApiKeyOpt,
    EsCaOpt,
    EsPasswordOpt,
    EsTimeoutOpt,
    EsUrlOpt,
    EsUserOpt,
    IndexOpt,
    StoreOpt,
    backend_for,
    console,
    es_config,
    handle_errors,
)


@handle_errors
def info(
    index: IndexOpt,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    es_url: EsUrlOpt = None,
    es_api_key: EsApiKeyOpt = None,
    es_user: EsUserOpt = None,
    es_password: EsPasswordOpt = None,
    es_ca_certs: EsCaOpt = None,
    es_timeout: EsTimeoutOpt = 120.0,
    store: StoreOpt = None,
) -> None:
    """Show an index's document count, vector dimension, model, version and mapping."""
    from dataclasses import asdict

    es = es_config(es_url, es_api_key, es_user, es_password, es_ca_certs, es_timeout)
    backend = backend_for(es, store)
    try:
        data = backend.info(index)
    finally:
        backend.close()
    if as_json:
        print(json.dumps(asdict(data), indent=2, default=str))
        return
    table = Table(title=f"{data.name} ({data.backend})", show_header=False)
    for key in ("count", "dims", "model", "version", "similarity"):
        table.add_row(key, f"{getattr(data, key):,}" if key == "count" else str(getattr(data, key)))
    for key, value in data.extra.items():
        table.add_row(key, json.dumps(value, indent=1, default=str) if isinstance(value, dict) else str(value))
    console.print(table)
