"""trec_eval as pyserini runs it: ``java -cp <anserini fat jar> trec_eval …``.

pyserini's ``pyserini.eval.trec_eval`` shells out to exactly this command, but takes the
first ``java`` on PATH (which may be older than the jar's Java 21) and imports all of
pyserini, which is slow, first. This module runs the same class with the Java 21+ runtime that
:func:`hybrid.java.find_java_home` finds, and parses its output.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from hybrid.errors import HybridError
from hybrid.java import anserini_jar, find_java_home

Ranking = Sequence[tuple[str, float]]


class EvaluationError(HybridError):
    """trec_eval failed or a run/qrels file is unusable."""


def trec_eval(
    qrels: Path,
    run: Path,
    measures: Sequence[str],
    *,
    per_query: bool = False,
    relevance_level: int | None = None,
    java_home: str | None = None,
) -> dict[str, dict[str, float]]:
    """Run trec_eval; returns ``{query id or "all": {measure: value}}``.

    ``-c`` is always set: queries in the qrels with no hits in the run count as zero.
    ``relevance_level`` is trec_eval's ``-l``: the lowest grade counted as relevant by
    binary measures (MAP, recall, recip_rank); nDCG still uses the graded labels.
    """
    home, _ = find_java_home(java_home)
    cmd = [str(home / "bin" / "java"), "-cp", str(anserini_jar()), "trec_eval", "-c"]
    if per_query:
        cmd.append("-q")
    if relevance_level is not None:
        cmd += ["-l", str(relevance_level)]
    for measure in measures:
        cmd += ["-m", measure]
    cmd += [str(qrels), str(run)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise EvaluationError(f"trec_eval failed on {run} with {qrels}: {' | '.join(tail) or 'no output'}")
    out: dict[str, dict[str, float]] = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue
        name, qid, value = parts
        try:
            out.setdefault(qid, {})[name] = float(value)
        except ValueError:
            continue  # e.g. runid
    return out


def write_trec_qrels(qrels: Mapping[str, Mapping[str, int]], path: Path) -> Path:
    """Write qrels in TREC layout (``qid 0 docid grade``), the layout trec_eval reads."""
    with path.open("w") as fh:
        for qid in sorted(qrels):
            for doc, grade in sorted(qrels[qid].items()):
                fh.write(f"{qid} 0 {doc} {grade}\n")
    return path
