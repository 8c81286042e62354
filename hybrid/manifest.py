"""How an index version's vectors were made: the model (by content hash) and its settings.

Every version records a :class:`VectorRecipe` in its own metadata (``_meta.hybrid.recipe``
on Elasticsearch, ``meta.json`` on the embedded store). Everything that touches vectors
checks it: appending to a version, searching, mining and training refuse a model whose
weights differ from the ones that made the vectors, and re-embedding (refresh, final)
encodes with the version's settings, never with the training truncation.

The hash covers the weight files and ``config.json`` (of a separate query tower too), so a
copied or moved model keeps its identity and a retrained one gets a new one.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from hybrid.config import EncoderSettings
from hybrid.errors import ModelError, ModelMismatchError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
HASH_CHARS = 16  # of the hex sha256: plenty to tell models apart, short enough to read
_cache: dict[tuple[Any, ...], str] = {}
_cache_lock = threading.Lock()


def _identity_files(model_dir: Path) -> list[Path]:
    files = [model_dir / "config.json"]
    files += sorted(p for p in model_dir.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    tower = model_dir / "query_encoder"
    if tower.is_dir():
        files += _identity_files(tower)
    return [f for f in files if f.is_file() and f.name != "trainer_state.pt"]


def fingerprint(model_dir: Path) -> list[list[Any]]:
    """Cheap stand-in for the hash: relative path, size and mtime of each identity file."""
    return [[str(f.relative_to(model_dir)), f.stat().st_size, f.stat().st_mtime_ns] for f in _identity_files(model_dir)]


def model_hash(model_dir: Path) -> str:
    """Content hash of a model's weights and config (cached per process by fingerprint)."""
    model_dir = model_dir.resolve()
    if not (model_dir / "config.json").is_file():
        raise ModelError(f"{model_dir} is not a model directory (no config.json)")
    key = (str(model_dir), *(tuple(x) for x in fingerprint(model_dir)))
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    digest = hashlib.sha256()
    for path in _identity_files(model_dir):
        digest.update(str(path.relative_to(model_dir)).encode() + b"\0")
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    value = digest.hexdigest()[:HASH_CHARS]
    with _cache_lock:
        _cache[key] = value
    return value


@dataclass(frozen=True)
class VectorRecipe:
    """Model identity and encoder settings that made an index version's vectors."""

    model: str  # display name (the default model's hub name, else the directory)
    model_path: str  # where to load the weights from
    model_hash: str
    dims: int
    pooling: str
    normalize: bool
    query_max_length: int
    passage_max_length: int
    query_prefix: str = ""
    passage_prefix: str = ""
    files: tuple[tuple[Any, ...], ...] = ()  # fingerprint at recording time: a fast re-check
    # A query model trained against these very vectors (``hybrid train --update query``):
    # queries are embedded by it, passages stay the passage model's. None: the passage model.
    query_model: str | None = None
    query_model_path: str | None = None
    query_model_hash: str | None = None
    query_version: int = 0  # 1, 2, ... for each query model applied to the same vectors

    def settings(self) -> EncoderSettings:
        """The encoder settings to embed passages and queries for this version with."""
        return EncoderSettings(
            pooling=self.pooling,  # type: ignore[arg-type]
            normalize=self.normalize,
            query_max_length=self.query_max_length,
            passage_max_length=self.passage_max_length,
            query_prefix=self.query_prefix,
            passage_prefix=self.passage_prefix,
        )

    def vectors_key(self) -> tuple[Any, ...]:
        """What must match for two vectors to live in one space (not where the model sits)."""
        return (self.model_hash, self.dims, self.pooling, self.normalize, self.passage_max_length, self.passage_prefix)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["files"] = [list(f) for f in self.files]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> VectorRecipe | None:
        """The recipe stored in index metadata; ``None`` for indices made before recipes."""
        if not data or "model_hash" not in data:
            return None
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["files"] = tuple(tuple(f) for f in values.get("files", ()))
        return cls(**values)

    @property
    def query_hash(self) -> str:
        """The hash of the model that embeds queries for these vectors."""
        return self.query_model_hash or self.model_hash

    def query_model_dir(self) -> Path:
        """The directory of the model that embeds queries, checked to hold the recorded weights."""
        if not self.query_model_path:
            return self.model_dir()
        path = Path(self.query_model_path)
        if not (path / "config.json").is_file() or model_hash(path) != self.query_model_hash:
            raise ModelError(
                f"the query model of this index version ({self.query_model}, hash {self.query_model_hash}) is gone "
                f"from {self.query_model_path} or holds other weights; restore it"
            )
        return path

    def with_query_model(self, model: str, model_dir: Path) -> VectorRecipe:
        """This recipe with ``model_dir`` embedding its queries: the next query version."""
        return replace(
            self,
            query_model=model,
            query_model_path=str(model_dir.resolve()),
            query_model_hash=model_hash(model_dir),
            query_version=self.query_version + 1,
        )

    def model_dir(self) -> Path:
        """The model directory, checked to still hold the weights that made the vectors."""
        path = Path(self.model_path)
        if not (path / "config.json").is_file():
            raise ModelError(
                f"the model that embedded this index ({self.model}, hash {self.model_hash}) is gone from "
                f"{self.model_path}; restore it, or re-embed the index: hybrid index CORPUS --recreate -m MODEL"
            )
        files = tuple(tuple(f) for f in fingerprint(path))
        if files != self.files and model_hash(path) != self.model_hash:
            raise ModelError(
                f"{self.model_path} now holds other weights (hash {model_hash(path)}) than the ones that embedded "
                f"this index ({self.model_hash}); restore them, or re-embed the index with --recreate"
            )
        return path


def make_recipe(model: str, model_dir: Path, dims: int, settings: EncoderSettings) -> VectorRecipe:
    """The recipe of vectors made by ``model_dir`` with ``settings``."""
    return VectorRecipe(
        model=model,
        model_path=str(model_dir.resolve()),
        model_hash=model_hash(model_dir),
        dims=dims,
        pooling=settings.pooling,
        normalize=settings.normalize,
        query_max_length=settings.query_max_length,
        passage_max_length=settings.passage_max_length,
        query_prefix=settings.query_prefix,
        passage_prefix=settings.passage_prefix,
        files=tuple(tuple(f) for f in fingerprint(model_dir)),
    )


DEFAULT_HINT = (
    "Leave out -m/--model to use the index's model, or re-embed the index with this one "
    "(hybrid index CORPUS --recreate -m MODEL)"
)


def check_model(
    index: str, recorded: VectorRecipe | None, model_hash_: str, model: str, action: str, hint: str = DEFAULT_HINT
) -> None:
    """Refuse to ``action`` (search, mine, …) index ``index`` with a model other than its own."""
    if recorded is None or recorded.model_hash == model_hash_:
        return
    raise ModelMismatchError(
        f"index '{index}' was embedded by {recorded.model} (hash {recorded.model_hash}) but {action} would use "
        f"{model} (hash {model_hash_}): vectors of two models do not mix. {hint}"
    )


def check_query_model(index: str, recorded: VectorRecipe | None, model_hash_: str, model: str, action: str) -> None:
    """Refuse to embed ``index``'s queries with a model made for other vectors: its own query
    model, or the passage model that made the vectors, are the ones that fit."""
    if recorded is None or model_hash_ in (recorded.model_hash, recorded.query_hash):
        return
    extra = f", queried by {recorded.query_model} (hash {recorded.query_hash})" if recorded.query_model else ""
    raise ModelMismatchError(
        f"index '{index}' was embedded by {recorded.model} (hash {recorded.model_hash}){extra} but {action} "
        f"would use {model} (hash {model_hash_}): vectors of two models do not mix. "
        f"{DEFAULT_HINT}"
    )


def check_same_vectors(index: str, recorded: VectorRecipe | None, new: VectorRecipe | None) -> None:
    """Refuse to add vectors made differently to a version (model or passage settings)."""
    if recorded is None or new is None or recorded.vectors_key() == new.vectors_key():
        return
    if recorded.model_hash != new.model_hash:
        check_model(index, recorded, new.model_hash, new.model, "writing", "Use that model, or --recreate to re-embed")
    raise ModelMismatchError(
        f"index '{index}' was embedded with pooling={recorded.pooling}, normalize={recorded.normalize}, "
        f"passage_max_length={recorded.passage_max_length}; this run uses pooling={new.pooling}, "
        f"normalize={new.normalize}, passage_max_length={new.passage_max_length}. Use the same settings, "
        "or --recreate to re-embed"
    )
