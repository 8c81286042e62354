"""The HTTP API's request and error bodies (pydantic), as OpenAPI documents them.

Search requests are strict: ``"5"`` and ``true`` are not a ``k``, no number is NaN or
infinite, and unknown fields are refused. An app serves the models :func:`request_models`
makes for it, whose ``k`` and ``depth`` are bounded by the server's ``max_k``; the classes
here are their shape (and bases), with no upper bound on either.
"""

# No `from __future__ import annotations`: pydantic and FastAPI read these annotations at run time.

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, create_model, model_validator
from pydantic import Field as PField

from hybrid.fusion import FusionConfig
from hybrid.search import SearchConfig

Field = Literal["title", "text"]
MAX_WEIGHT = 1e6  # weights and rrf_k beyond this only overflow fused scores


class ErrorBody(BaseModel):
    error: str


def _all_fields() -> list[Field]:
    return ["title", "text"]


def _not_blank(query: str) -> str:
    if not query.strip():
        raise ValueError("the query is empty or only whitespace")
    return query


Query = Annotated[str, AfterValidator(_not_blank)]


class SearchOptions(BaseModel):
    # strict: "5" and true are not a k; no NaN or infinity anywhere
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    mode: Literal["bm25", "dense", "hybrid"] = "hybrid"
    k: int = PField(10, ge=1)  # at most max_k: see request_models
    fusion: Literal["rrf", "linear"] = "rrf"
    rrf_k: float = PField(60.0, ge=0, le=MAX_WEIGHT)
    norm: Literal["minmax", "zscore"] = "minmax"
    bm25_weight: float = PField(0.5, ge=0, le=MAX_WEIGHT)
    dense_weight: float = PField(0.5, ge=0, le=MAX_WEIGHT)
    depth: int = PField(100, ge=1)  # at most max_k: see request_models
    num_candidates: int | None = PField(None, ge=1, le=10_000)
    fields: list[Field] = PField(default_factory=_all_fields)

    @model_validator(mode="after")
    def _some_weight(self) -> "SearchOptions":
        if self.bm25_weight == 0 and self.dense_weight == 0:
            raise ValueError("bm25_weight and dense_weight are both 0: every fused score would be 0")
        return self

    def config(self) -> SearchConfig:
        fusion = FusionConfig(
            method=self.fusion,
            rrf_k=self.rrf_k,
            normalization=self.norm,
            bm25_weight=self.bm25_weight,
            dense_weight=self.dense_weight,
            depth=self.depth,
        )
        return SearchConfig(
            mode=self.mode,
            k=self.k,
            fusion=fusion,
            num_candidates=self.num_candidates,
            texts=bool(self.fields),
        )


class SearchRequest(SearchOptions):
    query: Query


class BatchRequest(SearchOptions):
    queries: list[Query] = PField(min_length=1)


def request_models(max_k: int) -> tuple[type[SearchRequest], type[BatchRequest]]:
    """``SearchRequest`` and ``BatchRequest`` as one app serves them: ``k`` and ``depth`` at
    most ``max_k`` (fields keep their order, so a request's first fault is the same one)."""
    bounded: dict[str, Any] = {"k": (int, PField(10, ge=1, le=max_k)), "depth": (int, PField(100, ge=1, le=max_k))}
    search = create_model("SearchRequest", __base__=SearchRequest, **bounded)
    batch = create_model("BatchRequest", __base__=BatchRequest, **bounded)
    return search, batch
