"""Frozen, validated configuration objects. The CLI builds them; the library reads them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from hybrid.errors import ConfigError

if TYPE_CHECKING:
    from hybrid.manifest import VectorRecipe

VectorIndexType = Literal["hnsw", "int8_hnsw", "bbq_hnsw", "flat", "int8_flat"]
EmbeddedVectorIndex = Literal["flat", "hnsw"]
Stemmer = Literal["porter", "krovetz", "none"]
Pooling = Literal["cls", "mean"]


@dataclass(frozen=True)
class ElasticConfig:
    """How to reach an Elasticsearch cluster. Secrets never appear in ``repr``."""

    url: str = field(repr=False)  # may carry user:password@; several nodes comma-separated
    api_key: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_certs: Path | None = None
    verify_certs: bool = True
    ssl_fingerprint: str | None = None  # SHA-256 of the cluster's certificate, instead of a CA
    client_cert: Path | None = None
    client_key: Path | None = field(default=None, repr=False)
    request_timeout: float = 120.0

    @property
    def urls(self) -> list[str]:
        """Every node URL: ``--es-url http://a:9200,http://b:9200`` gives the client all of them,
        so a request to a node that is down is retried on another."""
        return [part.strip() for part in re.split(r",\s*(?=https?://)", self.url.strip()) if part.strip()]

    @property
    def display_url(self) -> str:
        """The URLs with any password in them replaced by ``***`` (for messages and logs)."""
        return ",".join(redact_url(u) for u in self.urls)

    def __post_init__(self) -> None:
        for url in self.urls or [self.url]:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"--es-url must start with http:// or https://, got '{redact_url(url)}'")
        if self.api_key and (self.username or self.password):
            raise ConfigError("give either an API key or a username/password, not both")
        if (self.username is None) != (self.password is None):
            raise ConfigError("basic auth needs both --es-user and --es-password")
        for label, path in (("CA certificate", self.ca_certs), ("client certificate", self.client_cert)):
            if path is not None and not path.is_file():
                raise ConfigError(f"{label} file not found: {path}")
        if self.client_key is not None and not self.client_key.is_file():
            raise ConfigError(f"client key file not found: {self.client_key}")
        if not self.request_timeout > 0 or self.request_timeout == float("inf"):  # NaN fails the first
            raise ConfigError("--es-timeout must be a positive number of seconds")


@dataclass(frozen=True)
class EncoderSettings:
    """How a model turns text into vectors; saved beside the weights as JSON."""

    pooling: Pooling = "mean"
    normalize: bool = False
    # Queries at the model's limit too: the encoder pads to a batch's longest query, so short
    # queries pay nothing, and long ones (ArguAna's arguments) are not cut to a fragment.
    query_max_length: int = 256
    passage_max_length: int = 256
    query_prefix: str = ""
    passage_prefix: str = ""

    @property
    def similarity(self) -> str:
        """The vector similarity this model is meant for: ``cosine`` or ``dot``."""
        return "cosine" if self.normalize else "dot"


@dataclass(frozen=True)
class LexicalSettings:
    """BM25 parameters and text analysis, shared by both backends where they can be."""

    k1: float = 0.9
    b: float = 0.4
    # Elasticsearch: an analyzer name; "standard" is the built-in standard analyzer with
    # English stop words, available on every distribution. "english" needs analysis-common.
    analyzer: str = "standard"
    # Embedded (Lucene via Anserini): stemming and stop words of its English analyzer.
    stemmer: Stemmer = "porter"
    keep_stopwords: bool = False

    def __post_init__(self) -> None:
        if self.k1 < 0 or not 0 <= self.b <= 1:
            raise ConfigError("BM25 needs k1 >= 0 and 0 <= b <= 1")


@dataclass(frozen=True)
class VectorSettings:
    """Vector index options. ES: ``dense_vector`` index_options; embedded: FAISS type."""

    es_type: VectorIndexType = "hnsw"
    m: int = 16
    ef_construction: int = 100
    embedded_type: EmbeddedVectorIndex = "flat"
    # kNN candidates per shard on ES (num_candidates = max(k, this)); HNSW efSearch embedded.
    num_candidates: int = 100

    def __post_init__(self) -> None:
        if self.m < 2 or self.ef_construction < self.m or self.num_candidates < 1:
            raise ConfigError("vector index needs m >= 2, ef_construction >= m, num_candidates >= 1")


@dataclass(frozen=True)
class IndexSpec:
    """What an index holds: identity of the encoder and how text and vectors are indexed."""

    name: str
    dims: int
    model: str
    normalized: bool
    lexical: LexicalSettings = field(default_factory=LexicalSettings)
    vectors: VectorSettings = field(default_factory=VectorSettings)
    replicas: int | None = None
    shards: int | None = None
    recipe: VectorRecipe | None = None  # how the vectors are made (model hash, settings)

    def __post_init__(self) -> None:
        validate_index_name(self.name)
        if self.dims < 1:
            raise ConfigError("vector dimension must be positive")


def redact_url(url: str) -> str:
    """``https://user:secret@host`` -> ``https://user:***@host``; other URLs unchanged."""
    scheme, sep, rest = url.partition("://")
    end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    userinfo, at, host = rest[:end].rpartition("@")  # the last @ ends the user info: passwords may hold @
    if not sep or not at:
        return url
    user = userinfo.split(":", 1)[0] if ":" in userinfo else ""
    return f"{scheme}://{user + ':' if user else ''}***@{host}{rest[end:]}"


def validate_index_name(name: str) -> None:
    """Names must be valid for both backends: lower-case ES index names and directory names."""
    bad = set(name) & set('\\/*?"<>| ,#:')
    if not name or name != name.lower() or bad or name.startswith(("-", "_", "+", ".")):
        raise ConfigError(
            f"invalid index name '{name}': use lower-case letters, digits, '-', '_' or '.', "
            "not starting with '-', '_', '+' or '.'"
        )
