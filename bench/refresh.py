"""Benchmark: a training refresh that writes vectors only against one that rewrites the index.

    python bench/refresh.py --store DIR --index NAME [--model DIR] [--repeats 2]

Same run, same index, same encoder and batch: the refresh ``hybrid train`` runs (on the
embedded store: the new version hard-links the documents and the Lucene index, and writes
only the new vectors) and the full rewrite it replaced (documents into SQLite again, Lucene
rebuilt), alternating, ``--repeats`` times each; each run is a real version swap. Reports
the median seconds of each, where the time goes (encode vs the rest), and the ratio.
Writes bench/results/refresh.json.
"""

from __future__ import annotations

import argparse
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
    times: dict[str, list[float]] = {"vectors only": [], "full rewrite": []}
    encode: dict[str, list[float]] = {"vectors only": [], "full rewrite": []}
    for repeat in range(args.repeats):
        for arm in ("vectors only", "full rewrite") if repeat % 2 == 0 else ("full rewrite", "vectors only"):
            spent = _encode_clock(encoder)
            started = time.perf_counter()
            _, count, _ = reembed(backend, args.index, encoder, args.batch_size, vectors_only=arm == "vectors only")
            times[arm].append(time.perf_counter() - started)
            encode[arm].append(_encode_clock(encoder) - spent)
            assert count == docs, f"{arm}: {count} of {docs} documents"
            print(f"{arm:13} run {repeat + 1}: {times[arm][-1]:7.1f} s (encoding {encode[arm][-1]:.1f} s)", flush=True)
    backend.close()

    med = {arm: statistics.median(values) for arm, values in times.items()}
    enc = {arm: statistics.median(values) for arm, values in encode.items()}
    ratio = med["full rewrite"] / med["vectors only"]
    print(f"\n{docs:,} documents, {model}")
    print(f"{'refresh':13} {'median s':>9} {'encode s':>9} {'other s':>8}")
    for arm in times:
        print(f"{arm:13} {med[arm]:9.1f} {enc[arm]:9.1f} {med[arm] - enc[arm]:8.1f}")
    print(f"speed-up of vectors only: {ratio:.2f}x")
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
        },
    )
    print(f"wrote {args.out}")
    return 0


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
