"""Benchmark: a training refresh that writes vectors only against one that rewrites the index.

    python -m bench refresh --store DIR --index NAME [--model DIR] [--repeats 2] [--processes 2]

Same run, same index, same encoder and batch: the refresh ``hybrid train`` runs (on the
embedded store: the new version hard-links the documents and the Lucene index, and writes
only the new vectors) and the full rewrite it replaced (documents into SQLite again, Lucene
rebuilt), alternating, ``--repeats`` times each; with ``--processes N`` also the refresh of
an N-process training run (N processes of one thread each embed their shares, this one
writes them). Each run is a real version swap. Reports
the median seconds of each, where the time goes (encode vs the rest), and the ratio.
Writes bench/results/refresh.json.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, machine, write_json


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--index", required=True)
    parser.add_argument("--model", default=None, help="the encoder [default: the index's model]")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="also time a refresh whose encoding is shared by this many processes (one thread each, "
        "as under torchrun), written by this one",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "refresh.json")
    args = parser.parse_args()

    import logging

    from hybrid.backends.embedded import EmbeddedBackend
    from hybrid.encoder import Encoder, EncoderConfig
    from hybrid.training.refresh import reembed

    logging.disable(logging.WARNING)
    backend = EmbeddedBackend(args.store)
    model = args.model or backend.info(args.index).model
    encoder = Encoder(EncoderConfig(model=model, batch_size=args.batch_size))
    docs = backend.count(args.index)
    arms = ["vectors only", "full rewrite"] + ([f"{args.processes} processes"] if args.processes > 1 else [])
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    encode: dict[str, list[float]] = {arm: [] for arm in arms}
    for repeat in range(args.repeats):
        for arm in arms if repeat % 2 == 0 else arms[::-1]:
            spent = _encode_clock(encoder)
            started = time.perf_counter()
            shares = _shares(args, model, docs) if arm.endswith("processes") else []
            _, count, _ = reembed(
                backend, args.index, encoder, args.batch_size, vectors_only=arm != "full rewrite", shares=shares
            )
            times[arm].append(time.perf_counter() - started)
            for folder in {f.parent for f in shares}:
                shutil.rmtree(folder)
            encode[arm].append(_encode_clock(encoder) - spent)
            assert count == docs, f"{arm}: {count} of {docs} documents"
            print(f"{arm:13} run {repeat + 1}: {times[arm][-1]:7.1f} s (encoding {encode[arm][-1]:.1f} s)", flush=True)
    backend.close()

    med = {arm: statistics.median(values) for arm, values in times.items()}
    enc = {arm: statistics.median(values) for arm, values in encode.items()}
    ratio = med["full rewrite"] / med["vectors only"]
    shared = {arm: round(med["vectors only"] / med[arm], 3) for arm in arms if arm.endswith("processes")}
    print(f"\n{docs:,} documents, {model}")
    print(f"{'refresh':13} {'median s':>9} {'encode s':>9} {'other s':>8}")
    for arm in times:
        print(f"{arm:13} {med[arm]:9.1f} {enc[arm]:9.1f} {med[arm] - enc[arm]:8.1f}")
    print(f"speed-up of vectors only: {ratio:.2f}x")
    for arm, speedup in shared.items():
        print(f"{arm} over one: {speedup:.2f}x (encoding in the other processes counts as 'other')")
    write_json(
        args.out,
        {
            "machine": machine(),
            "documents": docs,
            "model": model,
            "batch_size": args.batch_size,
            "seconds": times,
            "encode_seconds": encode,
            "median": med,
            "speedup": round(ratio, 3),
            "shared_encoding_speedup": shared,
        },
    )
    print(f"wrote {args.out}")
    return 0


SHARE_CHILD = """
import sys
from pathlib import Path
from hybrid.backends.embedded import EmbeddedBackend
from hybrid.encoder import Encoder, EncoderConfig
from hybrid.training.distributed import Distributed
from hybrid.training.refresh import encode_share
store, index, model, rank, world, docs, batch, folder = sys.argv[1:]
backend = EmbeddedBackend(Path(store))
encoder = Encoder(EncoderConfig(model=model, batch_size=int(batch)))
part = Distributed(int(rank), int(world)).part(int(docs))
encode_share(backend, index, encoder, part, Path(folder), int(batch))
"""


def _shares(args: argparse.Namespace, model: str, docs: int) -> list[Path]:
    """Each of ``--processes`` processes embeds its share (one thread each); their folders."""
    import os
    import subprocess
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="hybrid-bench-shares-"))
    folders = [work / f"rank-{r}" for r in range(args.processes)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    children = []
    for r in range(args.processes):
        argv = [str(args.store), args.index, model, str(r), str(args.processes), str(docs), str(args.batch_size)]
        children.append(subprocess.Popen([sys.executable, "-c", SHARE_CHILD, *argv, str(folders[r])], env=env))
    if any(child.wait() != 0 for child in children):
        raise SystemExit("a share process failed")
    return folders


def _encode_clock(encoder: object) -> float:
    """Seconds the encoder has spent encoding passages so far (wrapped once, on first use)."""
    if not hasattr(encoder, "_bench_clock"):
        inner = encoder.encode_passages  # type: ignore[attr-defined]
        clock = [0.0]

        def timed(docs: object) -> object:
            t0 = time.perf_counter()
            try:
                return inner(docs)
            finally:
                clock[0] += time.perf_counter() - t0

        encoder.encode_passages = timed  # type: ignore[attr-defined]
        encoder._bench_clock = clock  # type: ignore[attr-defined]
    return float(encoder._bench_clock[0])  # type: ignore[attr-defined]


if __name__ == "__main__":
    raise SystemExit(main())
