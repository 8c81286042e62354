"""``hybrid index``: put a corpus into Elasticsearch or the embedded store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .common import (
    DEFAULT_GRACE_S,
    BackendOptions,
    IndexOpt,
    QuietOpt,
    backend_options,
    console,
    err_console,
    handle_errors,
    say_grace,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from hybrid.backends.base import Backend
    from hybrid.config import VectorSettings
    from hybrid.encoder import Encoder
    from hybrid.indexing import IndexJob, IndexStats
    from hybrid.manifest import VectorRecipe
    from hybrid.types import Document

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Local Hugging Face model directory or a trained checkpoint (default: the index's own model when "
        "adding to it, else the shipped all-MiniLM-L6-v2).",
    ),
]


@handle_errors
@backend_options
def index(
    corpus: Annotated[
        Path | None,
        typer.Argument(help="Corpus file or dataset directory (BEIR, MS MARCO, DPR, jsonl; .gz ok)."),
    ] = None,
    *,
    index: IndexOpt,
    from_es: Annotated[
        str | None,
        typer.Option(
            "--from-es",
            help="Adopt an existing index of the --es-url cluster instead of a corpus: read it (never "
            "changed) and build a hybrid index from it; give --text-field, optionally --title-field/--id-field.",
        ),
    ] = None,
    slices: Annotated[int, typer.Option("--slices", help="--from-es: parallel readers (sliced scroll).")] = 1,
    in_place: Annotated[
        bool,
        typer.Option(
            "--in-place",
            help="--from-es: add the vectors to SOURCE_INDEX itself (a hybrid_vector_vN field, filled with "
            "partial updates; nothing else is changed) instead of building a new index; give -i SOURCE_INDEX.",
        ),
    ] = False,
    format: Annotated[
        str | None, typer.Option("--format", "-f", help="beir, msmarco, dpr or jsonl (default: detected).")
    ] = None,
    recreate: Annotated[
        bool, typer.Option("--recreate", help="Build a new version from scratch; the old one serves until it is done.")
    ] = False,
    model: ModelOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Documents per encode/write batch.")] = 256,
    encode_batch: Annotated[int, typer.Option("--encode-batch", help="Passages per forward pass.")] = 32,
    passage_max_length: Annotated[
        int | None, typer.Option("--passage-max-length", help="Token limit for passages (default: the model's).")
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu, cuda, cuda:1 … (default: cuda when present).")
    ] = None,
    k1: Annotated[float, typer.Option("--k1", help="BM25 k1.")] = 0.9,
    b: Annotated[float, typer.Option("--b", help="BM25 b.")] = 0.4,
    analyzer: Annotated[
        str,
        typer.Option(
            "--analyzer",
            help="ES analyzer: 'standard' (+English stop words, on every distribution) "
            "or one the cluster has, e.g. 'english'.",
        ),
    ] = "standard",
    stemmer: Annotated[
        str, typer.Option("--stemmer", help="Embedded BM25 stemmer: porter, krovetz or none.")
    ] = "porter",
    vector_index: Annotated[
        str | None,
        typer.Option(
            "--vector-index",
            help="ES: hnsw, int8_hnsw, bbq_hnsw, flat, int8_flat (hnsw); embedded: flat or hnsw (flat).",
        ),
    ] = None,
    hnsw_m: Annotated[int, typer.Option("--hnsw-m", help="HNSW graph degree.")] = 16,
    ef_construction: Annotated[int, typer.Option("--ef-construction", help="HNSW build beam width.")] = 100,
    id_field: Annotated[
        str | None, typer.Option("--id-field", help="jsonl / --from-es: key of the document id (--from-es: _id).")
    ] = None,
    title_field: Annotated[
        str | None, typer.Option("--title-field", help="jsonl / --from-es: key of the title (a.b.c nests).")
    ] = None,
    text_field: Annotated[
        str | None, typer.Option("--text-field", help="jsonl / --from-es: key of the text (a.b.c nests).")
    ] = None,
    skip_malformed: Annotated[
        bool, typer.Option("--skip-malformed", help="Skip and count malformed lines instead of stopping.")
    ] = False,
    limit: Annotated[int | None, typer.Option("--limit", help="Index at most this many documents.")] = None,
    drop_old: Annotated[
        bool,
        typer.Option(
            "--drop-old",
            help="--in-place with --recreate: after the switch (and --grace), remove the previous vector "
            "field's values from the documents (always done now; kept for scripts that pass it).",
        ),
    ] = False,
    grace: Annotated[
        float,
        typer.Option(
            "--grace",
            envvar="HYBRID_GRACE",
            help="Keep each swapped-out version this many seconds, so a running hybrid serve can load "
            "the new model and switch before it is deleted (0: at once; the command waits for it to exit).",
        ),
    ] = DEFAULT_GRACE_S,
    as_json: Annotated[bool, typer.Option("--json", help="Print the final stats as JSON.")] = False,
    conn: BackendOptions = BackendOptions(),
    quiet: QuietOpt = False,
) -> None:
    """Index a corpus: text for BM25 plus dense vectors. Re-running resumes where it stopped."""
    from hybrid.config import LexicalSettings
    from hybrid.corpus import JsonlFields, resolve_corpus
    from hybrid.encoder import Encoder, EncoderConfig
    from hybrid.errors import ConfigError
    from hybrid.indexing import IndexJob

    es = conn.es_config()
    if (corpus is None) == (from_es is None):
        raise ConfigError("give a corpus path or --from-es SOURCE_INDEX (one of them)")
    if from_es is not None:
        if es is None:
            raise ConfigError("--from-es reads an index of an Elasticsearch cluster: give --es-url")
        if not text_field:
            raise ConfigError("--from-es needs --text-field: the source field holding the passage text")
        if in_place and index != from_es:
            raise ConfigError(f"--in-place adds vectors to '{from_es}' itself: give -i {from_es}")
    elif in_place:
        raise ConfigError("--in-place goes with --from-es SOURCE_INDEX")
    if drop_old and not (in_place and recreate):
        raise ConfigError("--drop-old goes with --in-place --recreate (a new vector field replacing the old one)")
    elif corpus is not None:
        resolve_corpus(corpus, format)  # fail on a bad path or format before loading a model
    if stemmer not in ("porter", "krovetz", "none"):
        raise ConfigError(f"unknown stemmer '{stemmer}'; choose porter, krovetz or none")
    vectors = _vector_settings(vector_index, es is not None, hnsw_m, ef_construction)
    fields = None
    if (id_field or title_field or text_field) and from_es is None:
        default = JsonlFields()
        fields = JsonlFields(
            id=(id_field,) if id_field else default.id,
            title=(title_field,) if title_field else default.title,
            text=(text_field,) if text_field else default.text,
        )
    job = IndexJob(
        corpus=corpus,
        index=index,
        format=format,
        recreate=recreate,
        batch_size=batch_size,
        skip_malformed=skip_malformed,
        fields=fields,
        limit=limit,
        vectors=vectors,
        lexical=LexicalSettings(k1=k1, b=b, analyzer=analyzer, stemmer=stemmer),  # type: ignore[arg-type]
    )
    backend = conn.open()
    backend.retirement.grace_s = grace
    try:
        documents = None
        if from_es is not None:  # checked before a model is loaded
            from hybrid.backends.es_source import ElasticSource, SourceFields

            source = SourceFields(text=str(text_field), title=title_field, id=id_field or "_id")
            client = backend.client  # type: ignore[attr-defined]
            if in_place:  # before sampling fields: a disabled _source would look like missing fields
                from hybrid.backends.es_inplace import check_adoptable

                check_adoptable(client, from_es, str(text_field), title_field)
            documents = ElasticSource(client, from_es, source, batch=batch_size, slices=slices)
            if in_place:
                if id_field not in (None, "_id"):
                    raise ConfigError("--in-place updates documents by their _id: leave out --id-field")
                from hybrid.backends.es_inplace import adopt

                adopt(client, from_es, str(text_field), title_field)
        config = EncoderConfig(
            model=model, batch_size=encode_batch, device=device, passage_max_length=passage_max_length
        )
        recipe = _existing_recipe(backend, index) if not recreate and model is None else None
        if recipe is not None:  # adding to / resuming an index: embed exactly as it was embedded
            if passage_max_length not in (None, recipe.passage_max_length):
                raise ConfigError(
                    f"index '{index}' was embedded with --passage-max-length {recipe.passage_max_length}; "
                    "add to it with the same, or --recreate to re-embed"
                )
            config = EncoderConfig(
                model=str(recipe.model_dir()),
                batch_size=encode_batch,
                device=device,
                settings=recipe.settings(),
                model_hash=recipe.model_hash,
            )
        encoder = Encoder(config)
        # --drop-old is what every in-place switch now does: the backend drops the previous
        # field's vectors once --grace has passed
        stats = run_with_progress(job, backend, encoder, quiet, documents)
    finally:
        if backend.retirement.pending:
            say_grace(grace)
        backend.close()
    report(stats, index, backend.kind, as_json)


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
    from hybrid.errors import ConfigError

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

    def __exit__(self, *exc: object) -> None:
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
