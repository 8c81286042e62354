"""Benchmark: peak memory of training and refresh at 10 %, 50 % and 100 % of a large job.

    python -m bench scale [--queries 500000] [--candidates 200] [--docs 1000000] [--work DIR]

Synthetic data at MS MARCO's shape: pools of ``--queries`` queries x ``--candidates``
candidates (ids drawn from the corpus, scores descending) and a corpus of ``--docs`` short
documents in the embedded store. Each measured phase runs in a fresh process that samples
its own memory every 20 ms:

- ``table``: the pools' Arrow table built from the mined ``.jsonl.gz`` (streamed);
- ``train``: ``hybrid train``'s library path on those pools, a fixed number of steps, the
  same index for every size (only the pool count varies);
- ``refresh``: a training refresh (re-embed into a new version) of a corpus of that size.
- ``mine`` (with ``--mine``; about an hour): ``hybrid mine``'s library path, BM25 top-100
  and kNN top-100 for ``--mine-queries`` queries against one index of ``--mine-docs``
  documents drawn from a Zipf vocabulary of 30,000 words (the other phases' 16-word corpus
  would make every BM25 query match 40 % of the documents). One run: its peak memory is
  read when 10 %, 50 % and 100 % of the queries are mined, which is what runs of those
  sizes would peak at (the same queries in the same order), in 62 % of the time; but the
  labels' table is built for all the queries before the first batch (an SQLite file) and
  the pool file's final concatenation comes after the last point.
- ``gc`` (with ``--gc``; about 10 minutes): the same mining, ``--gc-queries`` queries, in
  a JVM with the collector hybrid gives a searching process (serial) and in one with the
  collector it gives index builds (G1, which was also the JVM's default here), taking
  turns for ``--gc-rounds`` rounds; then 2,000 single BM25 searches (top 100) in the same
  process, a command-line search's or the server's path. Peak memory, queries/s and
  latency of each.
- ``labels`` (with ``--labels``; a minute): what mining held before it streamed its labels,
  the query file and qrels read whole (``read_queries``, ``read_qrels`` and the positives'
  sets) for ``--queries`` x 10/50/100 % MS MARCO-shaped queries (numeric ids, one qrel each).

Peak *anonymous* memory (the process's own: what grows when data is held in memory) is
the figure the goal is about; peak RSS adds the mapped files' pages the kernel holds in
its shared, reclaimable cache. The encoder is a 2-layer, 32-d random BERT: memory, not
model speed, is measured here. Writes bench/results/scale.json (``--mine``, ``--gc``,
``--labels``: scale_mine.json, scale_gc.json, scale_labels.json).
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, PeakAnon, machine, proc_status, write_json

WORDS = [
    "ocean",
    "tide",
    "moon",
    "bread",
    "yeast",
    "flour",
    "solar",
    "panel",
    "bee",
    "hive",
    "river",
    "delta",
    "glacier",
    "ice",
    "rock",
    "salt",
]
FRACTIONS = (0.1, 0.5, 1.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=500_000)
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=200, help="training steps per size (batch 32)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/hybrid-scale"))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "scale.json")
    parser.add_argument("--mine", action="store_true", help="measure only the mining phase (see above)")
    parser.add_argument("--mine-queries", type=int, default=500_000)
    parser.add_argument(
        "--mine-docs", type=int, default=100_000, help="the mining corpus (the queries' count is what varies)"
    )
    parser.add_argument("--gc", action="store_true", help="compare the search JVM's collectors (see above)")
    parser.add_argument("--gc-queries", type=int, default=20_000)
    parser.add_argument("--gc-rounds", type=int, default=2)
    parser.add_argument("--labels", action="store_true", help="measure only reading the labels whole (see above)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    model = _tiny_model(args.work / "model")
    store = args.work / "store"
    if args.labels:
        return _labels_only(args)
    if args.mine:
        return _mine_only(args, model, store)
    if args.gc:
        return _gc_only(args, model, store)
    rows: list[dict[str, Any]] = []
    for fraction in FRACTIONS:
        name = f"c{int(fraction * 100):03d}"
        _index(store, name, int(args.docs * fraction), model, args.work)
    version = _current(store, "c100")
    for fraction in FRACTIONS:
        queries = int(args.queries * fraction)
        pools = _pools(args.work / f"pools-{queries}.jsonl.gz", queries, args.candidates, args.docs, version)
        for phase in ("table", "train"):
            spec = {"pools": str(pools), "store": str(store), "model": str(model), "steps": args.steps}
            rows.append({"phase": phase, "fraction": fraction, "size": queries, **_measure(phase, spec)})
            _print(rows[-1])
    for fraction in FRACTIONS:
        name = f"c{int(fraction * 100):03d}"
        spec = {"store": str(store), "index": name, "model": str(model)}
        size = int(args.docs * fraction)
        rows.append({"phase": "refresh", "fraction": fraction, "size": size, **_measure("refresh", spec)})
        _print(rows[-1])

    flat = {}
    print(f"\n{'phase':8} {'10 %':>10} {'50 %':>10} {'100 %':>10} {'100/10':>7}   (peak anonymous MiB)")
    for phase in ("table", "train", "refresh"):
        peaks = [r["peak_anon_mib"] for r in rows if r["phase"] == phase]
        flat[phase] = round(peaks[-1] / peaks[0], 3)
        print(f"{phase:8} " + " ".join(f"{p:10.0f}" for p in peaks) + f" {flat[phase]:7.2f}")
    write_json(
        args.out,
        {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows, "ratio_100_10": flat},
    )
    print(f"wrote {args.out}")
    return 0


def _zipf_mining(args: argparse.Namespace, model: Path, store: Path, n: int) -> dict[str, Any]:
    """The mining corpus indexed, and ``n`` labelled queries: the mine phase's spec."""
    import random

    name = f"zipf{args.mine_docs}"
    corpus = args.work / f"zipf-corpus-{args.mine_docs}.jsonl"
    words = [f"w{i}" for i in range(30_000)]
    cum = list(itertools.accumulate(1 / (i + 1) for i in range(len(words))))  # Zipf, s = 1
    rng = random.Random(7)
    if not corpus.is_file():
        with corpus.with_suffix(".tmp").open("w") as fh:
            for i in range(args.mine_docs):
                text = " ".join(rng.choices(words, cum_weights=cum, k=12))
                fh.write(json.dumps({"_id": f"z{i}", "title": "", "text": text}) + "\n")
        corpus.with_suffix(".tmp").replace(corpus)
    _index(store, name, args.mine_docs, model, args.work, corpus)
    qrng = random.Random(8)  # its own: the queries do not depend on whether the corpus was cached
    queries, qrels = _labelled_queries(
        args.work / name,
        n,
        lambda q: (f"q{q}", " ".join(qrng.choices(words, cum_weights=cum, k=5)), f"z{qrng.randrange(args.mine_docs)}"),
    )
    return {
        "store": str(store),
        "index": name,
        "queries": str(queries),
        "qrels": str(qrels),
        "out": str(args.work / f"zipf-pools-{n}.jsonl.gz"),
    }


def _mine_only(args: argparse.Namespace, model: Path, store: Path) -> int:
    n = args.mine_queries
    spec = {**_zipf_mining(args, model, store, n), "checkpoints": [int(n * f) for f in FRACTIONS]}
    result = _measure("mine", spec)
    rows = [{"phase": "mine", "fraction": f, **point} for f, point in zip(FRACTIONS, result.pop("points"), strict=True)]
    for row in rows:
        _print(row)
    out = args.out.with_name(args.out.stem + "_mine.json")
    args_out = {k: str(v) for k, v in vars(args).items()}
    write_json(out, {"machine": machine(), "args": args_out, "rows": rows, "run": result})
    peaks = [r["peak_anon_mib"] for r in rows]
    print(f"mine peak anonymous MiB at 10/50/100 %: {' / '.join(f'{p:.0f}' for p in peaks)}")
    print(f"whole run (pool file written): {result['peak_anon_mib']:.0f} MiB, {result['seconds']:.0f} s; wrote {out}")
    return 0


def _gc_only(args: argparse.Namespace, model: Path, store: Path) -> int:
    import statistics

    n = args.gc_queries
    base = {**_zipf_mining(args, model, store, n), "checkpoints": [n], "latency": 2000}
    arms = {"serial": "search", "g1": "index"}  # the collector, and the JVM hybrid starts with it
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    for r in range(args.gc_rounds):
        for arm in list(arms)[r % 2 :] + list(arms)[: r % 2]:  # taking turns: each goes first once
            result = _measure("mine", {**base, "jvm": arms[arm]})
            point = result.pop("points")[0]
            row = {"arm": arm, "round": r + 1, "collector": result["collector"], **point}
            row.update(queries_per_s=round(n / point["seconds"], 1), latency_ms=result["latency_ms"])
            runs[arm].append(row)
            lat = row["latency_ms"]
            print(
                f"{arm:6} round {r + 1}: peak anon {row['peak_anon_mib']:6.0f} MiB  JVM heap "
                f"{row['jvm_heap_committed_mib']:4d} MiB  {row['queries_per_s']:6.1f} q/s  "
                f"single search p50 {lat['p50']:.2f} ms p99 {lat['p99']:.2f} ms  ({', '.join(row['collector'])})",
                flush=True,
            )
    summary = {}
    for arm, rows in runs.items():
        summary[arm] = {key: statistics.median(r[key] for r in rows) for key in ("peak_anon_mib", "queries_per_s")} | {
            f"latency_{q}_ms": statistics.median(r["latency_ms"][q] for r in rows) for q in ("p50", "p99")
        }
    ratios = {key: round(summary["serial"][key] / summary["g1"][key], 3) for key in summary["serial"]}
    head = f"{'':8} {'peak anon MiB':>14} {'queries/s':>10} {'p50 ms':>8} {'p99 ms':>8}"
    print(f"\n{head}   (medians of {args.gc_rounds})")
    for arm, row in [*summary.items(), ("serial/g1", ratios)]:
        print(
            f"{arm:9} {row['peak_anon_mib']:13.2f} {row['queries_per_s']:10.2f} "
            f"{row['latency_p50_ms']:8.2f} {row['latency_p99_ms']:8.2f}"
        )
    out = args.out.with_name(args.out.stem + "_gc.json")
    args_out = {k: str(v) for k, v in vars(args).items()}
    result = {"machine": machine(), "args": args_out, "runs": runs, "medians": summary, "serial_over_g1": ratios}
    write_json(out, result)
    print(f"wrote {out}")
    return 0


def _labels_only(args: argparse.Namespace) -> int:
    import random

    rng = random.Random(11)
    rows: list[dict[str, Any]] = []
    for fraction in FRACTIONS:
        n = int(args.queries * fraction)
        queries, qrels = _labelled_queries(
            args.work / "marco",
            n,
            lambda q: (str(1_000_000 + q), " ".join(rng.choices(WORDS, k=7)), str(rng.randrange(8_841_823))),
        )
        spec = {"queries": str(queries), "qrels": str(qrels)}
        rows.append({"phase": "labels", "fraction": fraction, "size": n, **_measure("labels", spec)})
        print(f"labels {fraction:5.0%} {n:>9,}  held {rows[-1]['held_mib']:6.0f} MiB", flush=True)
    out = args.out.with_name(args.out.stem + "_labels.json")
    write_json(out, {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows})
    print(f"wrote {out}")
    return 0


def _labelled_queries(prefix: Path, n: int, make: Callable[[int], tuple[str, str, str]]) -> tuple[Path, Path]:
    """``PREFIX-queries-N.tsv`` and ``PREFIX-qrels-N.tsv``: query q is ``make(q)`` = (id, text, its positive)."""
    queries = prefix.with_name(f"{prefix.name}-queries-{n}.tsv")
    qrels = prefix.with_name(f"{prefix.name}-qrels-{n}.tsv")
    if not queries.is_file():
        with queries.open("w") as qf, qrels.open("w") as rf:
            for q in range(n):
                qid, text, doc = make(q)
                qf.write(f"{qid}\t{text}\n")
                rf.write(f"{qid}\t0\t{doc}\t1\n")
    return queries, qrels


def _print(row: dict[str, Any]) -> None:
    print(
        f"{row['phase']:8} {row['fraction']:5.0%} {row['size']:>9,}  peak anon {row['peak_anon_mib']:8.0f} MiB  "
        f"peak RSS {row['peak_rss_mib']:8.0f} MiB  {row['seconds']:8.1f} s"
        + (f"  JVM heap {row['jvm_heap_committed_mib']} MiB" if "jvm_heap_committed_mib" in row else ""),
        flush=True,
    )


# -- setup (not measured) ----------------------------------------------------------------


def _tiny_model(out: Path) -> Path:
    if (out / "config.json").is_file():
        return out
    from tests.models import tiny_bert

    return tiny_bert(out, query_max_length=16, passage_max_length=32)


def _index(store: Path, name: str, docs: int, model: Path, work: Path, corpus: Path | None = None) -> None:
    from hybrid.backends.embedded import EmbeddedBackend

    backend = EmbeddedBackend(store)
    try:
        if backend.exists(name) and backend.count(name) == docs:
            return
    finally:
        backend.close()
    corpus = corpus or work / f"corpus-{docs}.jsonl"
    if not corpus.is_file():
        import random

        rng = random.Random(docs)
        tmp = corpus.with_suffix(".tmp")
        with tmp.open("w") as fh:
            for i in range(docs):
                fh.write(json.dumps({"_id": f"d{i}", "title": "", "text": " ".join(rng.choices(WORDS, k=8))}) + "\n")
        tmp.replace(corpus)
    print(f"indexing {docs:,} documents into '{name}' (setup, not measured)", flush=True)
    cli = [sys.executable, "-m", "hybrid.cli", "index", str(corpus), "-i", name, "-m", str(model)]
    subprocess.run([*cli, "--store", str(store), "--batch-size", "1024", "-q"], check=True)


def _current(store: Path, name: str) -> str:
    return (store / name / "CURRENT").read_text().strip()


def _pools(path: Path, queries: int, candidates: int, docs: int, version: str) -> Path:
    """Synthetic mined pools: one positive, ``candidates`` distinct candidates, scores descending."""
    if path.is_file():
        return path
    import numpy as np

    print(f"writing {queries:,} pools x {candidates} candidates (setup, not measured)", flush=True)
    rng = np.random.default_rng(queries)
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wt", compresslevel=1) as fh:
        for q in range(queries):
            ids = rng.choice(docs, size=candidates + 1, replace=False)
            scores = np.sort(rng.uniform(0.1, 0.9, size=candidates))[::-1]
            cands = ",".join(f'["d{d}",{s:.5f},"bm25",false]' for d, s in zip(ids[1:], scores, strict=True))
            query = " ".join(WORDS[int(w)] for w in rng.integers(len(WORDS), size=6))
            fh.write(
                f'{{"qid":"q{q}","query":"{query}","version":"{version}",'
                f'"positives":[["d{ids[0]}",0.95]],"candidates":[{cands}]}}\n'
            )
    tmp.replace(path)
    return path


# -- measured phases, each in its own process ----------------------------------------------


def _measure(phase: str, spec: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--phase", phase, json.dumps(spec)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"phase {phase} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _run_phase(phase: str, spec: dict[str, Any]) -> None:
    import logging

    logging.disable(logging.WARNING)
    peak = PeakAnon().start()
    extra: dict[str, Any] = {}
    started = time.perf_counter()
    if phase == "table":
        from hybrid.training.data import pool_table, table_path

        table_path(Path(spec["pools"])).unlink(missing_ok=True)
        pool_table(Path(spec["pools"]))
    elif phase == "train":
        import tempfile

        from hybrid.backends.embedded import EmbeddedBackend
        from hybrid.negatives import SamplerConfig
        from hybrid.training.config import TrainConfig
        from hybrid.training.trainer import train

        backend = EmbeddedBackend(Path(spec["store"]))
        with tempfile.TemporaryDirectory() as out:
            config = TrainConfig(
                index="c100",
                queries=Path(spec["pools"]),  # not read: the pools hold the queries
                pools=Path(spec["pools"]),
                out=Path(out),
                model=spec["model"],
                sampler=SamplerConfig(n=3, depth=200),
                steps=int(spec["steps"]),
                batch_size=32,
                save_every=0,
                refresh_at_end=False,
                passage_max_length=32,
            )
            train(config, backend)
        backend.close()
    elif phase == "labels":
        from hybrid.corpus import read_qrels, read_queries

        before = proc_status()["RssAnon"]
        held = read_queries(Path(spec["queries"]))
        positives = {q: {d for d, g in docs.items() if g >= 1} for q, docs in read_qrels(Path(spec["qrels"])).items()}
        extra["held_mib"] = round((proc_status()["RssAnon"] - before) / 1024, 1)
        extra.update(queries=len(held), labelled=len(positives))
    elif phase == "mine":
        from hybrid.backends.embedded import EmbeddedBackend
        from hybrid.java import start_jvm
        from hybrid.mining import MineJob, run_mine
        from hybrid.query_encoder import encoder_for_index

        # the JVM hybrid starts to search (serial collector), or the one it starts to build an index
        start_jvm(None, builds_index=spec.get("jvm") == "index")
        out = Path(spec["out"])
        backend = EmbeddedBackend(Path(spec["store"]))
        job = MineJob(
            index=spec["index"], queries=Path(spec["queries"]), qrels=Path(spec["qrels"]), out=out, recreate=True
        )
        checkpoints = list(spec["checkpoints"])
        points: list[dict[str, Any]] = []

        def progress(done: int, total: int) -> None:
            while checkpoints and done >= checkpoints[0]:  # a batch may cross two when they are close
                from jnius import autoclass

                peak.sample()
                points.append(
                    {
                        "size": checkpoints.pop(0),  # reached within the batch that crossed it
                        "seconds": round(time.perf_counter() - started, 1),
                        "peak_anon_mib": peak.mib,
                        "peak_rss_mib": proc_status()["VmHWM"] / 1024,
                        # sized by its garbage collector (up to a quarter of RAM), not by the data
                        "jvm_heap_committed_mib": autoclass("java.lang.Runtime").getRuntime().totalMemory() >> 20,
                    }
                )

        run_mine(job, backend, encoder_for_index(backend, spec["index"], batch=True), progress)
        from jnius import autoclass

        beans = autoclass("java.lang.management.ManagementFactory").getGarbageCollectorMXBeans()
        extra["collector"] = [beans.get(i).getName() for i in range(beans.size())]
        extra["points"] = points
        if spec.get("latency"):
            extra["latency_ms"] = _single_searches(backend, spec["index"], Path(spec["queries"]), spec["latency"])
        backend.close()
    elif phase == "refresh":
        from hybrid.backends.embedded import EmbeddedBackend
        from hybrid.encoder import Encoder, EncoderConfig
        from hybrid.training.refresh import reembed

        backend = EmbeddedBackend(Path(spec["store"]))
        reembed(backend, spec["index"], Encoder(EncoderConfig(model=spec["model"], batch_size=1024)), batch_size=1024)
        backend.close()
    seconds = time.perf_counter() - started
    peak.stop()
    peak.sample()
    print(
        json.dumps(
            {
                "seconds": round(seconds, 1),
                "peak_anon_mib": peak.mib,
                "peak_rss_mib": proc_status()["VmHWM"] / 1024,
                **extra,
            }
        )
    )


def _single_searches(backend: Any, index: str, queries: Path, n: int) -> dict[str, float]:
    """Latency of ``n`` single BM25 searches (top 100), one at a time, after mining."""
    import numpy as np

    with queries.open() as fh:
        texts = [line.rstrip("\n").split("\t", 1)[1] for line in itertools.islice(fh, n)]
    times = []
    for text in texts:
        t0 = time.perf_counter()
        backend.bm25(index, [text], 100)
        times.append((time.perf_counter() - t0) * 1000)
    p50, p99 = np.percentile(times, [50, 99])
    return {"p50": round(float(p50), 3), "p99": round(float(p99), 3), "searches": len(times)}


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--phase":
        _run_phase(sys.argv[2], json.loads(sys.argv[3]))
        raise SystemExit(0)
    raise SystemExit(main())
