"""``hybrid search``: BM25, dense kNN or hybrid fusion over one index."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from .common import (
    BackendOptions,
    IndexOpt,
    NumCandidatesOpt,
    QueryModelOpt,
    backend_options,
    console,
    handle_errors,
)

if TYPE_CHECKING:
    from hybrid.fusion import FusionConfig
    from hybrid.types import Hit

ModeOpt = Annotated[str, typer.Option("--mode", help="bm25, dense or hybrid.")]
FusionOpt = Annotated[str, typer.Option("--fusion", help="Hybrid fusion: rrf or linear.")]
RrfKOpt = Annotated[float, typer.Option("--rrf-k", help="RRF constant k.")]
NormOpt = Annotated[str, typer.Option("--norm", help="Linear fusion score normalisation: minmax or zscore.")]
BM25WeightOpt = Annotated[float, typer.Option("--bm25-weight", help="Weight of the BM25 side.")]
DenseWeightOpt = Annotated[float, typer.Option("--dense-weight", help="Weight of the dense side.")]
DepthOpt = Annotated[int, typer.Option("--depth", help="Hits fetched per side before fusing.")]


def fusion_config(
    fusion: str, rrf_k: float, norm: str, bm25_weight: float, dense_weight: float, depth: int
) -> FusionConfig:
    """Fusion options -> config; shared by every command that fuses."""
    from hybrid.fusion import FusionConfig

    return FusionConfig(
        method=fusion,  # type: ignore[arg-type]
        rrf_k=rrf_k,
        normalization=norm,  # type: ignore[arg-type]  # validated by FusionConfig
        bm25_weight=bm25_weight,
        dense_weight=dense_weight,
        depth=depth,
    )


@handle_errors
@backend_options
def search(
    query: Annotated[str, typer.Argument(help="The query text.")],
    index: IndexOpt,
    mode: ModeOpt = "hybrid",
    k: Annotated[int, typer.Option("-k", "--k", help="Number of hits.")] = 10,
    fusion: FusionOpt = "rrf",
    rrf_k: RrfKOpt = 60.0,
    norm: NormOpt = "minmax",
    bm25_weight: BM25WeightOpt = 0.5,
    dense_weight: DenseWeightOpt = 0.5,
    depth: DepthOpt = 100,
    num_candidates: NumCandidatesOpt = None,
    model: QueryModelOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per hit, one per line.")] = False,
    conn: BackendOptions = BackendOptions(),
) -> None:
    """Search an index and print the top hits."""
    from hybrid.errors import ConfigError
    from hybrid.search import SearchConfig, Searcher, clean_query

    if not clean_query(query).strip():
        raise ConfigError("the query is empty; give some words to search for")

    config = SearchConfig(
        mode=mode,  # type: ignore[arg-type]  # validated by SearchConfig
        k=k,
        num_candidates=num_candidates,
        fusion=fusion_config(fusion, rrf_k, norm, bm25_weight, dense_weight, depth),
    )
    backend = conn.open()
    try:
        encoder = None
        if model is not None:
            from hybrid.query_encoder import encoder_for_index

            encoder = encoder_for_index(backend, index, model)
        hits = Searcher(backend, index, encoder).search([query], config)[0]
    finally:
        backend.close()
    print_hits(hits, f"{mode} · {index}", as_json)


def print_hits(hits: list[Hit], title: str, as_json: bool) -> None:
    """A table of hits, or JSON lines."""
    if as_json:
        for rank, hit in enumerate(hits, start=1):
            row = {"rank": rank, "id": hit.id, "score": hit.score, "title": hit.title, "text": hit.text}
            if hit.sources:
                row["sources"] = hit.sources
            print(json.dumps(row, ensure_ascii=False))
        return
    table = Table(title=title)
    table.add_column("#", justify="right")
    table.add_column("id")
    table.add_column("score", justify="right")
    table.add_column("title / text", overflow="fold")
    for rank, hit in enumerate(hits, start=1):
        snippet = " ".join(((hit.title or "") + " — " + (hit.text or "")).split())[:160]
        table.add_row(str(rank), hit.id, f"{hit.score:.4f}", snippet)
    console.print(table)
