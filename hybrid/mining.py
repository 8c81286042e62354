"""Candidate pools for training queries: BM25 top-k union dense top-k, scored exactly.

Each pool line (jsonl.gz) is one query::

    {"qid": "q1", "query": "...", "version": "docs-v000002",
     "positives": [["d7", 0.71, 2]],
     "candidates": [["d3", 0.69, "both", false], ["d9", 0.42, "bm25", true], ...]}

A positive's third item is its qrels grade (pools mined before grades were kept have
none: read as 1). Candidates are sorted by score, best first; each has its source (bm25 / knn / both) and a
"likely false negative" flag (an answer string occurs in it, for answer-labelled data).
Scores are exact inner products of the query with the stored vectors of the index version
(which the current encoder produced), not the ANN's approximations. Labelled positives are
never candidates. Mining streams in batches into part files and resumes from them.
"""

from __future__ import annotations

import gzip
import itertools
import json
import logging
import shutil
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hybrid.backends.base import Backend
from hybrid.corpus import iter_answers, iter_qrels, iter_queries
from hybrid.errors import ConfigError, CorpusError
from hybrid.indexing import batched
from hybrid.query_encoder import QueryEncoder, check_encoder
from hybrid.types import Hit, Query

log = logging.getLogger(__name__)
POOL_FORMAT = 2  # 2: each positive carries its qrels grade


@dataclass(frozen=True)
class MineJob:
    """What to mine and where to write it."""

    index: str
    queries: Path
    out: Path
    qrels: Path | None = None
    answers: Path | None = None
    bm25_depth: int = 100
    knn_depth: int = 100
    batch_size: int = 64
    num_candidates: int | None = None
    min_relevance: int = 1
    recreate: bool = False

    def __post_init__(self) -> None:
        if self.qrels is None and self.answers is None:
            raise ConfigError("mine needs --qrels (labelled positives) or --answers (DPR qa file)")
        if self.batch_size < 1:
            raise ConfigError("mine needs a --batch-size of at least 1")
        if self.bm25_depth < 0 or self.knn_depth < 0 or self.bm25_depth + self.knn_depth == 0:
            raise ConfigError("mine needs a positive --bm25-depth or --knn-depth")
        if not self.out.name.endswith(".jsonl.gz"):
            raise ConfigError(f"the pool file must end in .jsonl.gz, got {self.out.name}")


@dataclass
class MineStats:
    queries: int = 0
    mined: int = 0
    resumed: int = 0
    candidates: int = 0
    false_negatives: int = 0
    missing_positives: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class Pool:
    """One query's pool as read back from disk."""

    qid: str
    query: str
    positives: list[tuple[str, float]]
    candidates: list[tuple[str, float, str, bool]]
    version: str | None = None  # the index version it was mined against
    grades: dict[str, int] = field(default_factory=dict)  # each positive's qrels grade (absent: 1)


def parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def run_mine(
    job: MineJob, backend: Backend, encoder: QueryEncoder, progress: Callable[[int, int], None] | None = None
) -> MineStats:
    """Mine pools for every labelled query; resumes from finished part files.

    Memory is bounded by the batch: queries are streamed from their file, and the qrels
    (or answers) are looked up per batch in an SQLite table built beside the part files.
    """
    started = time.perf_counter()
    check_encoder(backend, job.index, encoder, "mining it")
    if job.recreate:
        job.out.unlink(missing_ok=True)
        shutil.rmtree(parts_dir(job.out), ignore_errors=True)
    if job.out.exists():
        raise ConfigError(f"{job.out} exists; pass --recreate to mine again")
    info = backend.info(job.index)
    # "format": parts written by an older hybrid (positives without grades) are not resumed.
    identity: dict[str, Any] = {
        "version": info.version,
        "model_hash": encoder.model_hash,
        "format": POOL_FORMAT,
        "inputs": _input_stamps(job),
    }
    with _open_parts(job, identity) as labels:
        stats = _mine_parts(job, backend, encoder, labels, info.version, progress)
    if stats.missing_positives:
        log.warning(
            "%d labelled positives are not in index '%s' and were skipped (check that the qrels match the corpus)",
            stats.missing_positives,
            job.index,
        )
    meta = {
        **{k: str(v) if isinstance(v, Path) else v for k, v in asdict(job).items()},
        "version": info.version,
        "model": encoder.name,
        "model_hash": encoder.model_hash,
        "normalized": info.similarity in ("cosine", "dot_product"),
        "stats": asdict(stats),
    }
    tmp = meta_path(job.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(meta_path(job.out))  # before the pool file appears: pools never lack their identity
    _concatenate(parts_dir(job.out), job.out)
    stats.seconds = time.perf_counter() - started
    return stats


def _open_parts(job: MineJob, identity: dict[str, Any]) -> _Labels:
    """The labels of ``job`` in their table beside the part files; part files begun against
    another ``identity`` (index version, model, input files) are deleted first."""
    parts = parts_dir(job.out)
    marker = parts / "identity.json"
    if marker.is_file() and json.loads(marker.read_text()) != identity:
        log.warning(
            "%s was begun against another index version, model or input file (or by an older hybrid); mining it again",
            parts,
        )
        shutil.rmtree(parts)
    fresh = not parts.exists()
    parts.mkdir(parents=True, exist_ok=True)
    try:
        labels = _Labels(job, parts / "labels.sqlite")
    except BaseException:
        if fresh:  # a bad input file leaves nothing behind
            shutil.rmtree(parts, ignore_errors=True)
        raise
    marker.write_text(json.dumps(identity))
    return labels


def _mine_parts(
    job: MineJob,
    backend: Backend,
    encoder: QueryEncoder,
    labels: _Labels,
    version: str,
    progress: Callable[[int, int], None] | None,
) -> MineStats:
    """Mine the queries no finished part file holds, one part file per batch.

    Raises:
        ConfigError: the finished part files are not the query file's first queries.
    """
    parts = parts_dir(job.out)
    done, last = _finished(parts)
    todo = labels.queries()
    skipped = deque(itertools.islice(todo, done), maxlen=1)  # the finished ones; keeps the last
    if done and (not skipped or skipped[0].id != last or done > labels.total):
        raise ConfigError(f"{parts} does not match the query file; pass --recreate to mine again")
    stats = MineStats(queries=labels.total, resumed=done)
    matcher = None
    if labels.has_answers:
        from hybrid.evaluation.runs import answer_matcher

        matcher = answer_matcher()
    part_no = len(list(parts.glob("part-*.jsonl.gz")))
    for batch in batched(todo, job.batch_size):
        positives, answers = labels.lookup([q.id for q in batch])
        records = _mine_batch(job, backend, encoder, batch, positives, answers, matcher, version, stats)
        part_no += 1
        _write_part(parts / f"part-{part_no:06d}.jsonl.gz", records)
        stats.mined += len(batch)
        if progress is not None:
            progress(stats.resumed + stats.mined, stats.queries)
    return stats


def meta_path(pools: Path) -> Path:
    """The JSON written beside a pool file: job, index version, model hash, counts."""
    return pools.with_name(pools.name.removesuffix(".jsonl.gz") + ".meta.json")


def read_pool_meta(pools: Path) -> dict[str, Any]:
    """The pool file's metadata; empty for pools written without one."""
    path = meta_path(pools)
    if not path.is_file():
        return {}
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _mine_batch(
    job: MineJob,
    backend: Backend,
    encoder: QueryEncoder,
    batch: list[Query],
    positives: dict[str, dict[str, int]],
    answers: dict[str, list[str]],
    matcher: Callable[[str, list[str]], bool] | None,
    version: str,
    stats: MineStats,
) -> list[dict[str, Any]]:
    texts = [q.text for q in batch]
    vectors = encoder.encode_queries(texts)
    need = matcher is not None  # passage texts only to look for answers (false-negative flags)
    lexical = backend.bm25(job.index, texts, job.bm25_depth, texts=need) if job.bm25_depth else [[] for _ in batch]
    dense = (
        backend.knn(job.index, vectors, job.knn_depth, job.num_candidates, texts=need)
        if job.knn_depth
        else [[] for _ in batch]
    )
    union: list[dict[str, Hit]] = []
    sources: list[dict[str, str]] = []
    for lex_hits, dense_hits in zip(lexical, dense, strict=True):
        found: dict[str, Hit] = {}
        source: dict[str, str] = {}
        for side, hits in (("bm25", lex_hits), ("knn", dense_hits)):
            for hit in hits:
                found.setdefault(hit.id, hit)
                source[hit.id] = "both" if hit.id in source and source[hit.id] != side else side
        union.append(found)
        sources.append(source)
    to_score = [sorted(set(found) | set(positives.get(q.id, {}))) for q, found in zip(batch, union, strict=True)]
    exact = backend.score(job.index, vectors, to_score)
    records = []
    for query, found, source, scores in zip(batch, union, sources, exact, strict=True):
        pos_ids = positives.get(query.id, {})
        pos = sorted(((d, round(scores[d], 6), g) for d, g in pos_ids.items() if d in scores), key=lambda p: -p[1])
        stats.missing_positives += len(pos_ids) - len(pos)
        cands: list[tuple[str, float, str, bool]] = []
        for doc_id, hit in found.items():
            if doc_id in pos_ids or doc_id not in scores:
                continue
            flagged = bool(matcher and matcher(hit.text or "", answers.get(query.id, [])))
            stats.false_negatives += flagged
            cands.append((doc_id, round(scores[doc_id], 6), source[doc_id], flagged))
        cands.sort(key=lambda c: (-c[1], c[0]))
        stats.candidates += len(cands)
        records.append(
            {"qid": query.id, "query": query.text, "version": version, "positives": pos, "candidates": cands}
        )
    return records


def read_pools(path: Path) -> Iterator[Pool]:
    """Stream pools from a mined ``.jsonl.gz`` file.

    Raises:
        CorpusError: the file is missing, empty, truncated or has a malformed line (with file:line).
    """
    if not path.is_file():
        raise CorpusError("pool file not found; mine it with: hybrid mine", str(path))
    number = 0
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):  # noqa: B007 (the errors below name it)
                row = json.loads(line)
                yield Pool(
                    qid=row["qid"],
                    query=row["query"],
                    positives=[(p[0], float(p[1])) for p in row["positives"]],
                    candidates=[(d, float(s), src, bool(fn)) for d, s, src, fn in row["candidates"]],
                    version=row.get("version"),
                    grades={p[0]: int(p[2]) for p in row["positives"] if len(p) > 2},
                )
    except (EOFError, OSError, gzip.BadGzipFile) as exc:
        raise CorpusError(
            f"the pool file is truncated or not gzip ({exc}); mine it again with --recreate", str(path), number + 1
        ) from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise CorpusError(f"malformed pool line ({exc!r}); mine it again with --recreate", str(path), number) from exc
    if number == 0:
        raise CorpusError("the pool file is empty; mine it again with --recreate", str(path))


class _Labels:
    """The job's labels in an SQLite table, and its labelled queries streamed in file order.

    At MS MARCO's size the queries and qrels held as Python objects grow with the query
    count (docs/benchmarks.md, Scale and memory); here a batch's labels are one indexed lookup.
    """

    CHUNK = 500  # ids per IN (...) clause, well inside SQLite's variable limit

    def __init__(self, job: MineJob, path: Path) -> None:
        """Build the table and count the labelled queries: input errors are raised here."""
        self.job = job
        path.unlink(missing_ok=True)  # rebuilt on every run: a few seconds, never stale
        self.db = sqlite3.connect(path)
        try:
            self._build()
            self.total = sum(1 for _ in self.queries())
            if not self.total:
                raise ConfigError("no query has qrels or answers: check that the query ids match")
        except BaseException:
            self.db.close()
            raise

    def _build(self) -> None:
        job = self.job
        # a (query, document) pair listed twice keeps its last grade, as the qrels reader does
        self.db.execute("CREATE TABLE qrel (qid TEXT, doc TEXT, grade INTEGER, PRIMARY KEY (qid, doc))")
        self.db.execute("CREATE TABLE answer (qid TEXT PRIMARY KEY, answers TEXT)")
        if job.qrels is not None:
            for grades in batched(iter_qrels(job.qrels), 10_000):
                self.db.executemany("INSERT OR REPLACE INTO qrel VALUES (?, ?, ?)", grades)
        if job.answers is not None:
            for answers in batched(((q, json.dumps(a)) for q, a in iter_answers(job.answers)), 10_000):
                self.db.executemany("INSERT OR REPLACE INTO answer VALUES (?, ?)", answers)
        positive = "CREATE TABLE positive AS SELECT qid, doc, grade FROM qrel WHERE grade >= ?"
        self.db.execute(positive, (job.min_relevance,))
        self.db.execute("DROP TABLE qrel")
        self.db.execute("CREATE INDEX positive_qid ON positive (qid)")
        self.db.commit()
        self.has_answers = self.db.execute("SELECT 1 FROM answer LIMIT 1").fetchone() is not None

    def __enter__(self) -> _Labels:
        return self

    def __exit__(self, *exc: object) -> None:
        self.db.close()

    def queries(self) -> Iterator[Query]:
        """The query file's queries that have a positive or answers, in file order."""
        for chunk in batched(iter_queries(self.job.queries), self.CHUNK):
            ids = [q.id for q in chunk]
            labelled = {q for (q,) in self._select("SELECT DISTINCT qid FROM positive", ids)}
            labelled.update(q for (q,) in self._select("SELECT qid FROM answer", ids))
            yield from (q for q in chunk if q.id in labelled)

    def lookup(self, qids: list[str]) -> tuple[dict[str, dict[str, int]], dict[str, list[str]]]:
        """These queries' positives (with their grades) and answers."""
        positives: dict[str, dict[str, int]] = {}
        for qid, doc, grade in self._select("SELECT qid, doc, grade FROM positive", qids):
            positives.setdefault(qid, {})[doc] = int(grade)
        return positives, {qid: json.loads(a) for qid, a in self._select("SELECT qid, answers FROM answer", qids)}

    def _select(self, select: str, qids: list[str]) -> Iterator[tuple[Any, ...]]:
        for chunk in batched(qids, self.CHUNK):
            yield from self.db.execute(f"{select} WHERE qid IN ({','.join('?' * len(chunk))})", chunk)


def _input_stamps(job: MineJob) -> list[list[Any]]:
    """Path, size and mtime of each input file: a changed file starts the mining again."""
    stamps = []
    for f in (job.queries, job.qrels, job.answers):
        if f is not None and f.exists():
            stat = f.stat()
            stamps.append([str(f.resolve()), stat.st_size, stat.st_mtime_ns])
    return stamps


def _finished(parts: Path) -> tuple[int, str | None]:
    """How many queries the finished part files hold, and the last one's id."""
    count, last = 0, None
    for part in sorted(parts.glob("part-*.jsonl.gz")):
        with gzip.open(part, "rt", encoding="utf-8") as fh:
            for line in fh:
                count += 1
                last = line
    return count, (json.loads(last)["qid"] if last is not None else None)


def _write_part(path: Path, records: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    # zlib's default level: slightly larger parts than level 9 (gzip.open's default) in a
    # fraction of the time, which at 200 candidates a query was a visible share of mining
    with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=6) as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    tmp.replace(path)  # a part exists only when complete: resuming never reads half a part


def _concatenate(parts: Path, out: Path) -> None:
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("wb") as dst:
        for part in sorted(parts.glob("part-*.jsonl.gz")):
            with part.open("rb") as src:
                shutil.copyfileobj(src, dst)  # concatenated gzip members are one valid gzip file
    tmp.replace(out)
    shutil.rmtree(parts, ignore_errors=True)
