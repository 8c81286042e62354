"""``hybrid info``: what an index holds."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from .common import (
    BackendOptions,
    IndexOpt,
    backend_options,
    console,
    handle_errors,
)

if TYPE_CHECKING:
    from hybrid.backends.base import Backend
    from hybrid.types import IndexInfo


JsonOpt = Annotated[bool, typer.Option("--json", help="Print as JSON.")]


@handle_errors
@backend_options
def info(index: IndexOpt, as_json: JsonOpt = False, conn: BackendOptions = BackendOptions()) -> None:
    """Show an index's count, dimension, version, and how its vectors were made (model hash, settings)."""
    from dataclasses import asdict

    data = _read(conn, index)
    if as_json:
        print(json.dumps(asdict(data), indent=2, default=str))
        return
    table = Table(title=f"{data.name} ({data.backend})", show_header=False)
    for key in ("count", "dims", "model", "version", "similarity"):
        table.add_row(key, f"{getattr(data, key):,}" if key == "count" else str(getattr(data, key)))
    for key, value in [*_recipe_rows(data.recipe or {}), *_extra_rows(data.extra, index)]:
        table.add_row(key, value)
    console.print(table)


def _read(conn: BackendOptions, index: str) -> IndexInfo:
    """The backend's description of ``index``; on Elasticsearch, with how many vectors may be stale."""
    backend = conn.open()
    try:
        data = backend.info(index)
        if backend.kind == "elasticsearch":
            stale = _unchecked(backend, index)
            if stale is not None:
                data.extra["may_be_stale"] = stale
    finally:
        backend.close()
    return data


def _recipe_rows(recipe: dict[str, Any]) -> list[tuple[str, str]]:
    """How the vectors were made: the models, their hashes and the embedding settings."""
    if not recipe:
        return [("model hash", "not recorded (made by an older hybrid; rebuild with --recreate)")]
    rows = [("model hash", str(recipe.get("model_hash"))), ("model path", str(recipe.get("model_path")))]
    if recipe.get("query_model_hash"):
        query_model = (
            f"{recipe.get('query_model_path')} (hash {recipe.get('query_model_hash')}, "
            f"query version {recipe.get('query_version')})"
        )
    else:
        query_model = "the passage model"
    embedding = (
        f"pooling={recipe.get('pooling')} normalize={recipe.get('normalize')} "
        f"passage_max_length={recipe.get('passage_max_length')} query_max_length={recipe.get('query_max_length')} "
        f"prefixes={recipe.get('query_prefix')!r}/{recipe.get('passage_prefix')!r}"
    )
    return [*rows, ("query model", query_model), ("embedding", embedding)]


def _extra_rows(extra: dict[str, Any], index: str) -> list[tuple[str, str]]:
    """The backend's further figures; documents whose vector is missing or may be stale said in
    words, with the command that fixes them."""
    rows: list[tuple[str, str]] = []
    unchecked = extra.get("may_be_stale")
    if isinstance(unchecked, int) and unchecked:
        rows.append(
            (
                "may be stale",
                f"{unchecked:,} documents were written since hybrid sync last checked their text against "
                f"their vector: hybrid sync -i {index} re-embeds those whose text changed",
            )
        )
    missing = extra.get("without_vector")
    if isinstance(missing, int) and missing:
        rows.append(
            (
                "without vector",
                f"{missing:,} documents have no vector (no text in the text field, or written after the last "
                f"embedding): hybrid sync -i {index} embeds them",
            )
        )
    for key, value in extra.items():
        if key in ("without_vector", "may_be_stale"):
            continue  # said above, in words
        rows.append((key, json.dumps(value, indent=1, default=str) if isinstance(value, dict) else str(value)))
    return rows


def _unchecked(backend: Backend, index: str) -> int | None:
    """How many documents may carry a stale vector (see :func:`hybrid.sync.unchecked_count`)."""
    from hybrid.errors import HybridError
    from hybrid.sync import unchecked_count

    try:
        return unchecked_count(backend, index)
    except HybridError:  # never checked by sync, or no vectors of ours: nothing to say
        return None
