"""``hybrid index``: put a corpus into Elasticsearch or the embedded store."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from hybrid.errors import ConfigError

from .common import (
    DEFAULT_GRACE_S,
    BackendOptions,
    DeviceOpt,
    EncodeBatchOpt,
    GraceOpt,
    IndexOpt,
    LimitOpt,
    Params,
    QuietOpt,
    backend_options,
    console,
    erase,
    err_console,
    handle_errors,
    option_group,
    say_grace,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from hybrid.backends.base import Backend
    from hybrid.config import LexicalSettings, VectorSettings
    from hybrid.corpus import JsonlFields
    from hybrid.encoder import Encoder, EncoderConfig
    from hybrid.indexing import IndexJob, IndexStats
    from hybrid.manifest import VectorRecipe
    from hybrid.types import Document

Opt = typer.Option

CorpusArg = Annotated[
    Path | None, typer.Argument(help="Corpus file or dataset directory (BEIR, MS MARCO, DPR, jsonl; .gz ok).")
]
FormatOpt = Annotated[str | None, Opt("--format", "-f", help="beir, msmarco, dpr or jsonl (default: detected).")]
RecreateOpt = Annotated[
    bool, Opt("--recreate", help="Build a new version from scratch; the old one serves until it is done.")
]
BatchSizeOpt = Annotated[int, Opt("--batch-size", help="Documents per encode/write batch.")]
SkipMalformedOpt = Annotated[bool, Opt("--skip-malformed", help="Skip and count malformed lines instead of stopping.")]
JsonOpt = Annotated[bool, Opt("--json", help="Print the final stats as JSON.")]

# --from-es: the documents come from an index of the --es-url cluster instead of a corpus.
_ADOPT: Params = [
    (
        "from_es",
        Annotated[
            str | None,
            Opt(
                "--from-es",
                help="Adopt an existing index of the --es-url cluster instead of a corpus: read it (never "
                "changed) and build a hybrid index from it; give --text-field, optionally --title-field/--id-field.",
            ),
        ],
        None,
    ),
    ("slices", Annotated[int, Opt("--slices", help="--from-es: parallel readers (sliced scroll).")], 1),
    (
        "in_place",
        Annotated[
            bool,
            Opt(
                "--in-place",
                help="--from-es: add the vectors to SOURCE_INDEX itself (a hybrid_vector_vN field, filled with "
                "partial updates; nothing else is changed) instead of building a new index; give -i SOURCE_INDEX.",
            ),
        ],
        False,
    ),
    # --drop-old is what every in-place switch now does: the backend drops the previous field's
    # vectors once --grace has passed.
    (
        "drop_old",
        Annotated[
            bool,
            Opt(
                "--drop-old",
                help="--in-place with --recreate: after the switch (and --grace), remove the previous vector "
                "field's values from the documents (always done now; kept for scripts that pass it).",
            ),
        ],
        False,
    ),
]

# How passages are embedded; EncoderConfig's fields, less what an index's recipe fixes.
_ENCODING: Params = [
    (
        "model",
        Annotated[
            str | None,
            Opt(
                "--model",
                "-m",
                help="Local Hugging Face model directory or a trained checkpoint (default: the index's own model "
                "when adding to it, else the shipped all-MiniLM-L6-v2).",
            ),
        ],
        None,
    ),
    ("encode_batch", EncodeBatchOpt, 32),
    (
        "passage_max_length",
        Annotated[int | None, Opt("--passage-max-length", help="Token limit for passages (default: the model's).")],
        None,
    ),
    ("device", DeviceOpt, None),
]

# How text and vectors are indexed: BM25 and the vector index structure.
_SETTINGS: Params = [
    ("k1", Annotated[float, Opt("--k1", help="BM25 k1.")], 0.9),
    ("b", Annotated[float, Opt("--b", help="BM25 b.")], 0.4),
    (
        "analyzer",
        Annotated[
            str,
            Opt(
                "--analyzer",
                help="ES analyzer: 'standard' (+English stop words, on every distribution) "
                "or one the cluster has, e.g. 'english'.",
            ),
        ],
        "standard",
    ),
    ("stemmer", Annotated[str, Opt("--stemmer", help="Embedded BM25 stemmer: porter, krovetz or none.")], "porter"),
    (
        "vector_index",
        Annotated[
            str | None,
            Opt(
                "--vector-index",
                help="ES: hnsw, int8_hnsw, bbq_hnsw, flat, int8_flat (hnsw); embedded: flat or hnsw (flat).",
            ),
        ],
        None,
    ),
    ("hnsw_m", Annotated[int, Opt("--hnsw-m", help="HNSW graph degree.")], 16),
    ("ef_construction", Annotated[int, Opt("--ef-construction", help="HNSW build beam width.")], 100),
]

# Which keys of a jsonl line (or fields of a --from-es document) hold the id, title and text.
_FIELDS: Params = [
    (
        "id_field",
        Annotated[str | None, Opt("--id-field", help="jsonl / --from-es: key of the document id (--from-es: _id).")],
        None,
    ),
    (
        "title_field",
        Annotated[str | None, Opt("--title-field", help="jsonl / --from-es: key of the title (a.b.c nests).")],
        None,
    ),
    (
        "text_field",
        Annotated[str | None, Opt("--text-field", help="jsonl / --from-es: key of the text (a.b.c nests).")],
        None,
    ),
]


@dataclass(frozen=True)
class _Adopt:
    """The --from-es options: which index of the cluster to read, and whether to add vectors to it."""

    from_es: str | None
    slices: int
    in_place: bool
    drop_old: bool

    def check(self, corpus: Path | None, index: str, recreate: bool, text_field: str | None, elastic: bool) -> None:
        """Refuse a corpus with --from-es (or neither), and each --from-es option without what it goes with."""
        if (corpus is None) == (self.from_es is None):
            raise ConfigError("give a corpus path or --from-es SOURCE_INDEX (one of them)")
        if self.from_es is not None:
            if not elastic:
                raise ConfigError("--from-es reads an index of an Elasticsearch cluster: give --es-url")
            if not text_field:
                raise ConfigError("--from-es needs --text-field: the source field holding the passage text")
            if self.in_place and index != self.from_es:
                raise ConfigError(f"--in-place adds vectors to '{self.from_es}' itself: give -i {self.from_es}")
        elif self.in_place:
            raise ConfigError("--in-place goes with --from-es SOURCE_INDEX")
        if self.drop_old and not (self.in_place and recreate):
            raise ConfigError("--drop-old goes with --in-place --recreate (a new vector field replacing the old one)")


@dataclass(frozen=True)
class _Fields:
    """The --id-field/--title-field/--text-field options."""

    id_field: str | None
    title_field: str | None
    text_field: str | None

    def jsonl(self) -> JsonlFields | None:
        """The keys to read from a jsonl corpus; ``None`` (the reader's defaults) when none is given."""
        from hybrid.corpus import JsonlFields

        if not (self.id_field or self.title_field or self.text_field):
            return None
        default = JsonlFields()
        return JsonlFields(
            id=(self.id_field,) if self.id_field else default.id,
            title=(self.title_field,) if self.title_field else default.title,
            text=(self.text_field,) if self.text_field else default.text,
        )


@handle_errors
@backend_options
@option_group(_ADOPT, "adopt", lambda values: _Adopt(**values))
@option_group(_ENCODING, "encoding", dict)
@option_group(_SETTINGS, "settings", dict)
@option_group(_FIELDS, "fields", lambda values: _Fields(**values))
def index(
    corpus: CorpusArg = None,
    *,
    index: IndexOpt,
    adopt: _Adopt,
    format: FormatOpt = None,
    recreate: RecreateOpt = False,
    batch_size: BatchSizeOpt = 256,
    encoding: dict[str, Any],
    settings: dict[str, Any],
    fields: _Fields,
    skip_malformed: SkipMalformedOpt = False,
    limit: LimitOpt = None,
    grace: GraceOpt = DEFAULT_GRACE_S,
    as_json: JsonOpt = False,
    conn: BackendOptions = BackendOptions(),
    quiet: QuietOpt = False,
) -> None:
    """Index a corpus: text for BM25 plus dense vectors. Re-running resumes where it stopped."""
    from hybrid.corpus import resolve_corpus
    from hybrid.encoder import Encoder
    from hybrid.indexing import IndexJob

    es = conn.es_config()
    adopt.check(corpus, index, recreate, fields.text_field, es is not None)
    if corpus is not None:
        resolve_corpus(corpus, format)  # fail on a bad path or format before loading a model
    lexical, vectors = _index_settings(settings, es is not None)
    job = IndexJob(
        corpus=corpus,
        index=index,
        format=format,
        recreate=recreate,
        batch_size=batch_size,
        skip_malformed=skip_malformed,
        fields=fields.jsonl() if adopt.from_es is None else None,
        limit=limit,
        vectors=vectors,
        lexical=lexical,
    )
    backend = conn.open()
    backend.retirement.grace_s = grace
    try:
        documents = _adopted(backend, adopt, fields, batch_size)  # checked before a model is loaded
        encoder = Encoder(_encoder_config(encoding, backend, index, recreate))
        stats = run_with_progress(job, backend, encoder, quiet, documents)
    finally:
        if backend.retirement.pending:
            say_grace(grace)
        backend.close()
    report(stats, index, backend.kind, as_json)


def _index_settings(options: dict[str, Any], elastic: bool) -> tuple[LexicalSettings, VectorSettings]:
    """BM25 and vector index settings from --k1 … --ef-construction, for ES or the embedded store."""
    from hybrid.config import LexicalSettings

    if options["stemmer"] not in ("porter", "krovetz", "none"):
        raise ConfigError(f"unknown stemmer '{options['stemmer']}'; choose porter, krovetz or none")
    vectors = _vector_settings(options["vector_index"], elastic, options["hnsw_m"], options["ef_construction"])
    lexical = LexicalSettings(
        k1=options["k1"], b=options["b"], analyzer=options["analyzer"], stemmer=options["stemmer"]
    )
    return lexical, vectors


def _adopted(backend: Backend, adopt: _Adopt, fields: _Fields, batch_size: int) -> Iterable[Document] | None:
    """The documents of the --from-es index (``None`` without it); with --in-place, the index is
    first made to take the vectors."""
    if adopt.from_es is None:
        return None
    from hybrid.backends.es_source import ElasticSource, SourceFields

    text_field, title_field = str(fields.text_field), fields.title_field
    source = SourceFields(text=text_field, title=title_field, id=fields.id_field or "_id")
    client = backend.client  # type: ignore[attr-defined]
    if adopt.in_place:  # before sampling fields: a disabled _source would look like missing fields
        from hybrid.backends.es_inplace import check_adoptable

        check_adoptable(client, adopt.from_es, text_field, title_field)
    documents = ElasticSource(client, adopt.from_es, source, batch=batch_size, slices=adopt.slices)
    if adopt.in_place:
        if fields.id_field not in (None, "_id"):
            raise ConfigError("--in-place updates documents by their _id: leave out --id-field")
        from hybrid.backends.es_inplace import adopt as adopt_in_place

        adopt_in_place(client, adopt.from_es, text_field, title_field)
    return documents


def _encoder_config(options: dict[str, Any], backend: Backend, index: str, recreate: bool) -> EncoderConfig:
    """The encoder the options ask for; adding to (or resuming) an index without --model, the
    one it was embedded with, exactly as it was embedded."""
    from hybrid.encoder import EncoderConfig

    max_length = options["passage_max_length"]
    config = EncoderConfig(
        model=options["model"],
        batch_size=options["encode_batch"],
        device=options["device"],
        passage_max_length=max_length,
    )
    recipe = _existing_recipe(backend, index) if not recreate and config.model is None else None
    if recipe is None:
        return config
    if max_length not in (None, recipe.passage_max_length):
        raise ConfigError(
            f"index '{index}' was embedded with --passage-max-length {recipe.passage_max_length}; "
            "add to it with the same, or --recreate to re-embed"
        )
    return EncoderConfig(
        model=str(recipe.model_dir()),
        batch_size=config.batch_size,
        device=config.device,
        settings=recipe.settings(),
        model_hash=recipe.model_hash,
    )


def _existing_recipe(backend: Backend, index: str) -> VectorRecipe | None:
    from hybrid.query_encoder import index_recipe

    return index_recipe(backend, index) if backend.exists(index) else None


def run_with_progress(
    job: IndexJob, backend: Backend, encoder: Encoder, quiet: bool, documents: Iterable[Document] | None = None
) -> IndexStats:
    """Run an indexing job, drawing a progress bar unless quiet."""
    from hybrid.indexing import run_index

    if quiet:
        return run_index(job, backend, encoder, documents=documents)
    with _IndexProgress() as bar:
        return run_index(job, backend, encoder, bar.update, documents)


def _vector_settings(kind: str | None, elastic: bool, m: int, ef: int) -> VectorSettings:
    from hybrid.config import VectorSettings

    allowed = ("hnsw", "int8_hnsw", "bbq_hnsw", "flat", "int8_flat") if elastic else ("flat", "hnsw")
    if kind is not None and kind not in allowed:
        raise ConfigError(f"--vector-index '{kind}' is not available here; choose one of {', '.join(allowed)}")
    if elastic:
        return VectorSettings(es_type=kind or "hnsw", m=m, ef_construction=ef)  # type: ignore[arg-type]
    return VectorSettings(embedded_type=kind or "flat", m=m, ef_construction=ef)  # type: ignore[arg-type]


class _IndexProgress:
    """A rich bar over the corpus bytes, with documents and docs/s."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[docs]} docs · {task.fields[rate]} docs/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err_console,
            transient=False,
        )
        self.task = self.progress.add_task("indexing", total=None, docs=0, rate="-")

    def __enter__(self) -> _IndexProgress:
        self.progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if kind is not None and issubclass(kind, Exception):
            erase(self.progress)  # the error line stands alone
        else:  # done, or Ctrl-C: the bar stays
            self.progress.stop()

    def update(self, stats: IndexStats) -> None:
        elapsed = self.progress.tasks[0].elapsed or 0.0
        rate = f"{stats.read / elapsed:,.1f}" if elapsed > 0 else "-"
        description = {"committing": "committing", "done": "done"}.get(stats.phase, "indexing")
        done = stats.phase != "indexing"
        self.progress.update(
            self.task,
            completed=stats.total_bytes if done else stats.bytes_read,
            total=stats.total_bytes or None,
            docs=f"{stats.read:,}",
            rate=rate,
            description=description,
        )


def report(stats: IndexStats, name: str, backend: str, as_json: bool) -> None:
    from dataclasses import asdict

    if as_json:
        console.print_json(json.dumps({"index": name, "backend": backend, **asdict(stats)}))
        return
    table = Table(title=f"{name} ({backend}, version {stats.version})", show_header=False)
    rows = [
        ("documents in index (verified)", f"{stats.count:,}"),
        ("read / written", f"{stats.read:,} / {stats.written:,}"),
        ("already indexed (resumed)", f"{stats.already_indexed:,}"),
        ("repeated ids skipped", f"{stats.duplicates:,}"),
        ("malformed (or text-less) skipped", f"{stats.malformed:,}"),
        (
            "encode / write / commit",
            f"{stats.encode_seconds:.1f}s / {stats.write_seconds:.1f}s / {stats.commit_seconds:.1f}s",
        ),
        ("total", f"{stats.total_seconds:.1f}s"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
