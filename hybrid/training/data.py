"""Training examples from mined pools: one positive and sampled negatives per query.

Which query, which positive and which negatives a step sees is a pure function of
(seed, step), so an interrupted run resumes on exactly the data it would have seen.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np

from hybrid.errors import ConfigError, CorpusError
from hybrid.mining import Pool, read_pools
from hybrid.negatives import SamplerConfig, sample_negatives

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    """One query with its positive and negatives (document ids)."""

    qid: str
    query: str
    positive: str
    negatives: tuple[str, ...]
    # Every labelled positive (and likely false negative) of the query: never its negative,
    # wherever in the batch it turns up.
    not_negative: frozenset[str] = frozenset()
    extra_positives: tuple[str, ...] = ()  # further labelled positives drawn this step
    labelled: frozenset[str] = frozenset()  # the labelled positives alone (the targets of a multi-positive loss)
    # Labelled positives whose qrels grade is below the query's best, as (document, grade /
    # best grade): their weight in a multi-positive numerator when grades are weighted.
    gains: tuple[tuple[str, float], ...] = ()
    # Mining model's scores of positive, extra positives and negatives, in that order: the
    # distillation target that keeps the trained model near its start.
    teacher: tuple[float, ...] = ()


@dataclass(frozen=True)
class _Entry:
    qid: str
    query: str
    positives: tuple[tuple[str, float], ...]
    grades: tuple[int, ...]  # each positive's qrels grade
    ids: Sequence[str]
    scores: np.ndarray  # float64 candidate scores, best first
    eligible: np.ndarray  # bool: not a likely false negative
    not_negative: frozenset[str]


class PoolData:
    """Pools read lazily from a memory-mapped Arrow table; ``batch(step)`` draws examples.

    The table is built once beside the pool file (streaming, a few thousand pools at a
    time) and mapped, so a process holds only the rows of the batch it draws: memory does
    not grow with the number of queries, and every rank of a run shares the kernel's pages.
    """

    def __init__(
        self,
        path: Path,
        sampler: SamplerConfig,
        seed: int,
        exclude: frozenset[str] = frozenset(),
        positives_per_query: int = 1,
        grades: bool = False,
    ) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        self.path = path
        self.sampler = sampler
        self.seed = seed
        self.positives_per_query = positives_per_query
        self.grades = grades  # draw positives in proportion to their grade
        table = pa.ipc.open_file(pa.memory_map(str(pool_table(path)), "r")).read_all()
        self._batches = table.to_batches()
        self._starts = np.cumsum([0] + [b.num_rows for b in self._batches])
        usable = pc.greater(pc.list_value_length(table.column("pos_ids")), 0)
        self.held_out = 0  # queries with a positive held out as the guard's dev set
        if exclude:  # the guard's dev queries: never trained on
            held = pc.fill_null(
                pc.is_in(table.column("qid"), value_set=pa.array(sorted(exclude), type=pa.string())), False
            )
            self.held_out = int(pc.sum(pc.and_(usable, held)).as_py() or 0)
            usable = pc.and_(usable, pc.invert(held))
        self._rows = np.flatnonzero(usable.to_numpy(zero_copy_only=False))  # queries with a positive
        if grades and table.column("pos_grades").null_count == table.num_rows:
            log.warning(
                "%s holds no grades (mined before hybrid kept them, or labelled by answers): --grades weight "
                "weighs nothing; mine the pools again (--remine) to use the qrels' grades",
                path,
            )
        self.skipped = table.num_rows - len(self._rows) - self.held_out  # queries without a positive in the index
        if not len(self._rows):
            raise ConfigError(f"{path} has no query with a positive to train on")
        self._order: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self._rows)

    def _permutation(self, epoch: int) -> np.ndarray:
        """The query order of ``epoch`` (a function of seed and epoch; cached for the current one)."""
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self._rows)))
        return self._order[1]

    def entry(self, n: int) -> _Entry:
        """The ``n``-th usable query's pool, read from the mapped table."""
        row = int(self._rows[n])
        b = int(np.searchsorted(self._starts, row, side="right")) - 1
        batch, i = self._batches[b], row - int(self._starts[b])

        def values(name: str) -> Any:
            return batch.column(name)[i].values

        pos = zip(values("pos_ids").to_pylist(), values("pos_scores").to_numpy(), strict=True)
        positives = tuple((d, float(s)) for d, s in pos)
        flagged = values("flagged").to_pylist()
        grades = batch.column("pos_grades")[i]  # null: pools mined before grades were kept
        return _Entry(
            qid=batch.column("qid")[i].as_py(),
            query=batch.column("query")[i].as_py(),
            positives=positives,
            grades=tuple(grades.values.to_pylist()) if grades.is_valid else (1,) * len(positives),
            ids=_Strings(values("ids")),
            scores=values("scores").to_numpy(),
            eligible=values("eligible").to_numpy(zero_copy_only=False),
            not_negative=frozenset([d for d, _ in positives] + flagged),
        )

    def draw(self, step: int, j: int, size: int) -> tuple[_Entry, Example]:
        """Example ``j`` of global micro-step ``step`` with the pool it was drawn from."""
        i = step * size + j
        epoch, pos = divmod(i, len(self._rows))
        entry = self.entry(int(self._permutation(epoch)[pos]))
        rng = np.random.default_rng([self.seed, step, j, 1])
        first = self._first(entry, rng)
        positive, pos_score = entry.positives[first]
        drawn = sample_negatives(entry.scores, self._anchor(entry, pos_score), self.sampler, rng, entry.eligible)
        negatives = tuple(entry.ids[k] for k in drawn)
        extra: list[tuple[str, float]] = []
        if self.positives_per_query > 1 and len(entry.positives) > 1:
            others = [p for k, p in enumerate(entry.positives) if k != first]
            picks = np.random.default_rng([self.seed, step, j, 2]).permutation(len(others))
            extra = [others[int(k)] for k in picks[: self.positives_per_query - 1]]
        teacher = (pos_score, *(s for _, s in extra), *(float(entry.scores[k]) for k in drawn))
        return entry, Example(
            entry.qid,
            entry.query,
            positive,
            negatives,
            entry.not_negative,
            extra_positives=tuple(d for d, _ in extra),
            labelled=frozenset(d for d, _ in entry.positives),
            teacher=teacher,
            gains=self._gains(entry),
        )

    def _weights(self, entry: _Entry) -> np.ndarray | None:
        """Each positive's grade over the query's best (a grade below 0 counts as 0); None
        when grades are not weighted or all alike: then every positive counts the same."""
        grades = np.clip(np.asarray(entry.grades, dtype=np.float64), 0.0, None)
        if not self.grades or len(grades) < 2 or grades.min() == grades.max():
            return None
        return grades / grades.max()

    def _first(self, entry: _Entry, rng: np.random.Generator) -> int:
        """Which positive is the target: uniform, or in proportion to its grade when grades
        are weighted and differ (equal grades draw exactly as uniform does)."""
        weights = self._weights(entry)
        if weights is not None:
            return int(rng.choice(len(weights), p=weights / weights.sum()))
        return int(rng.integers(len(entry.positives)))

    def _gains(self, entry: _Entry) -> tuple[tuple[str, float], ...]:
        """The lesser positives' weights in a multi-positive numerator (0: not a target)."""
        weights = self._weights(entry)
        if weights is None:
            return ()
        return tuple((d, float(w)) for (d, _), w in zip(entry.positives, weights, strict=True) if w < 1.0)

    def _anchor(self, entry: _Entry, sampled: float) -> float:
        """The positive score the SimANS kernel centres on (see ``SamplerConfig.anchor``)."""
        if self.sampler.anchor == "max":
            return max(s for _, s in entry.positives)
        if self.sampler.anchor == "mean":
            return float(np.mean([s for _, s in entry.positives]))
        return sampled

    def batch(self, step: int, size: int) -> list[Example]:
        """The ``size`` examples of global micro-step ``step`` (epochs reshuffle by seed)."""
        return [self.draw(step, j, size)[1] for j in range(size)]

    def pool_entries(self, most: int | None = None) -> Iterator[tuple[np.ndarray, float, np.ndarray]]:
        """``(scores, mean positive score, eligible)`` per query (at most ``most``, spread
        evenly), for sampler diagnostics."""
        count = len(self._rows)
        picked = range(count) if most is None or most >= count else np.linspace(0, count - 1, most).astype(int)
        for n in picked:
            e = self.entry(int(n))
            yield e.scores, float(np.mean([s for _, s in e.positives])), e.eligible


class _Strings(Sequence[str]):
    """Candidate ids of one pool, decoded one at a time (only the drawn negatives are)."""

    def __init__(self, array: Any) -> None:
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    @overload
    def __getitem__(self, k: int) -> str: ...
    @overload
    def __getitem__(self, k: slice) -> Sequence[str]: ...
    def __getitem__(self, k: int | slice) -> str | Sequence[str]:
        if isinstance(k, slice):
            return self.array.to_pylist()[k]
        return self.array[int(k)].as_py()


TABLE_SCHEMA_VERSION = "2"  # 2: each positive's grade


def table_path(pools: Path) -> Path:
    """Where the Arrow table of a pool file lives: beside it."""
    return pools.with_name(pools.name.removesuffix(".jsonl.gz") + ".arrow")


def pool_table(pools: Path) -> Path:
    """The Arrow table of ``pools``, built when missing or older than the pool file.

    Rows hold what training draws from, settled once: DPR-style answer-labelled queries
    without gold passages take their best-scoring answer-holding candidate as positive.
    """
    import pyarrow as pa

    if not pools.is_file():
        raise CorpusError("pool file not found; mine it with: hybrid mine", str(pools))
    stat = pools.stat()
    source = f"{stat.st_size}:{stat.st_mtime_ns}:{TABLE_SCHEMA_VERSION}"
    target = table_path(pools)
    if target.is_file():
        try:
            with pa.memory_map(str(target), "r") as mm:
                meta = pa.ipc.open_file(mm).schema.metadata or {}
            if meta.get(b"source") == source.encode():
                return target
        except (OSError, pa.ArrowInvalid):
            pass  # a damaged table: build it again
    host = socket.gethostname()
    for stale in target.parent.glob(f"{target.name}.{host}.*.tmp"):  # left by a killed build on this host
        pid = stale.name.removeprefix(f"{target.name}.{host}.").removesuffix(".tmp")
        if pid.isdigit() and not _running(int(pid)):
            stale.unlink(missing_ok=True)
    schema = _schema().with_metadata({"source": source})
    tmp = target.with_name(f"{target.name}.{host}.{os.getpid()}.tmp")
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            rows: list[dict[str, Any]] = []
            for pool in read_pools(pools):
                rows.append(_row(pool))
                if len(rows) >= TABLE_BATCH:
                    writer.write_batch(pa.RecordBatch.from_pylist(rows, schema=schema))
                    rows = []
            if rows:
                writer.write_batch(pa.RecordBatch.from_pylist(rows, schema=schema))
        os.replace(tmp, target)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the pools' table {target}: {exc}; the pool file's folder must be writable"
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)
    return target


TABLE_BATCH = 1024


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _row(pool: Pool) -> dict[str, Any]:
    positives = list(pool.positives)
    candidates = pool.candidates
    if not positives:
        # Answer-labelled data (NQ) without gold passages: DPR's convention takes the best
        # scoring passage that contains an answer as the positive.
        flagged_ = [c for c in candidates if c[3]]
        if flagged_:
            positives = [(flagged_[0][0], flagged_[0][1])]
            candidates = [c for c in candidates if c[0] != flagged_[0][0]]
    grades = [pool.grades.get(d, 1) for d, _ in positives] if pool.grades else None
    return {
        "qid": pool.qid,
        "query": pool.query,
        "pos_ids": [d for d, _ in positives],
        "pos_scores": [s for _, s in positives],
        "pos_grades": grades,
        "ids": [c[0] for c in candidates],
        "scores": [c[1] for c in candidates],
        "eligible": [not c[3] for c in candidates],
        "flagged": [c[0] for c in pool.candidates if c[3]],
    }


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("qid", pa.string()),
            ("query", pa.string()),
            ("pos_ids", pa.list_(pa.string())),
            ("pos_scores", pa.list_(pa.float64())),
            ("pos_grades", pa.list_(pa.int32())),
            ("ids", pa.list_(pa.string())),
            ("scores", pa.list_(pa.float64())),
            ("eligible", pa.list_(pa.bool_())),
            ("flagged", pa.list_(pa.string())),
        ]
    )
