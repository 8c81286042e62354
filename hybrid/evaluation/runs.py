"""Run files in the formats pyserini's tools read: TREC, MS MARCO and DPR retrieval JSON.

Every writer uses :func:`canonical` order, which is trec_eval's own: score descending, ties
broken by document id descending. So a rank computed here (MS MARCO MRR, DPR accuracy)
always agrees with what trec_eval computes from the TREC file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

Ranking = list[tuple[str, float]]
Run = dict[str, Ranking]
RUN_FORMATS: tuple[str, ...] = ("trec", "msmarco", "dpr")


def canonical(ranking: Sequence[tuple[str, float]]) -> Ranking:
    """Sort ``(docid, score)`` pairs as trec_eval does: score desc, then docid desc."""
    return sorted(ranking, key=lambda pair: (pair[1], pair[0]), reverse=True)


def write_trec(
    run: Mapping[str, Sequence[tuple[str, float]]], path: Path, tag: str = "hybrid", depth: int | None = None
) -> Path:
    """``qid Q0 docid rank score tag``, one line per hit."""
    with path.open("w") as fh:
        for qid in sorted(run):
            for rank, (doc, score) in enumerate(canonical(run[qid])[:depth], start=1):
                fh.write(f"{qid} Q0 {doc} {rank} {score:.6f} {tag}\n")
    return path


def write_msmarco(run: Mapping[str, Sequence[tuple[str, float]]], path: Path) -> Path:
    """MS MARCO's ``qid \\t pid \\t rank``."""
    with path.open("w") as fh:
        for qid in sorted(run):
            for rank, (doc, _score) in enumerate(canonical(run[qid]), start=1):
                fh.write(f"{qid}\t{doc}\t{rank}\n")
    return path


def answer_matcher(regex: bool = False) -> Callable[[str, Sequence[str]], bool]:
    """pyserini's DPR answer matching (``has_answers`` with its ``SimpleTokenizer``)."""
    from pyserini.eval.evaluate_dpr_retrieval import SimpleTokenizer, has_answers

    tokenizer = SimpleTokenizer()
    return lambda text, answers: bool(has_answers(text, list(answers), tokenizer, regex))


def write_dpr(
    run: Mapping[str, Sequence[tuple[str, float]]],
    path: Path,
    questions: Mapping[str, str],
    answers: Mapping[str, Sequence[str]],
    texts: Mapping[str, tuple[str, str]],
    *,
    regex: bool = False,
) -> dict[str, list[bool]]:
    """The retrieval JSON pyserini's ``evaluate_dpr_retrieval`` reads; returns has_answer flags.

    ``texts`` maps docid to ``(title, text)``; as in pyserini, answers are matched in the
    passage text, not the title.
    """
    matches = answer_matcher(regex)
    out: dict[str, dict[str, object]] = {}
    flags: dict[str, list[bool]] = {}
    for qid in sorted(run):
        contexts = []
        qflags = []
        for doc, score in canonical(run[qid]):
            title, text = texts.get(doc, ("", ""))
            hit = matches(text, answers.get(qid, []))
            qflags.append(hit)
            contexts.append({"docid": doc, "score": score, "text": f"{title}\n{text}", "has_answer": hit})
        out[qid] = {"question": questions.get(qid, ""), "answers": list(answers.get(qid, [])), "contexts": contexts}
        flags[qid] = qflags
    path.write_text(json.dumps(out, indent=1, ensure_ascii=False))
    return flags
