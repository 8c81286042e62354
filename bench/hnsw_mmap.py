"""Benchmark: memory of opening an embedded HNSW graph, mapped (hybrid's way) or read.

    python -m bench hnsw_mmap [--vectors 200000] [--dims 384] [--m 16]

Builds a FAISS HNSW (inner product) graph over random vectors, saves it as the embedded
store does, then opens it in fresh processes both ways, alternating: read into memory
(``faiss.read_index``, what hybrid did) and memory-mapped (``IO_FLAG_MMAP_IFC``, what it
does now). Reports the growth of each process's anonymous memory (its private pages) on
opening, and checks that both searches return the same neighbours. Writes
bench/results/hnsw_mmap.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, machine, write_json

CHILD = """
import json, sys
import faiss, numpy as np
def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon"):
            return int(line.split()[1]) / 1024
path, mapped = sys.argv[1], sys.argv[2] == "1"
before = anon()
index = faiss.read_index(path, faiss.IO_FLAG_MMAP_IFC if mapped else 0)
opened = anon()
queries = np.random.default_rng(1).standard_normal((20, index.d)).astype(np.float32)
index.hnsw.efSearch = 100
_, rows = index.search(queries, 10)
print(json.dumps({"anon_mib": round(opened - before, 1), "rows": rows.tolist()}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vectors", type=int, default=200_000)
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "hnsw_mmap.json")
    args = parser.parse_args()

    import faiss
    import numpy as np

    from hybrid.backends.embedded.vectors import HNSW_FILE, build_hnsw
    from hybrid.config import VectorSettings

    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / HNSW_FILE
        vectors = np.random.default_rng(0).standard_normal((args.vectors, args.dims)).astype(np.float32)
        print(f"building HNSW over {args.vectors:,} x {args.dims} (setup, not measured)", flush=True)
        build_hnsw(vectors, VectorSettings(embedded_type="hnsw", m=args.m), path)
        size_mib = path.stat().st_size / 2**20
        del vectors
        growth: dict[str, list[float]] = {"read": [], "mapped": []}
        rows: dict[str, list[list[int]]] = {}
        for repeat in range(args.repeats):
            for arm in ("read", "mapped") if repeat % 2 == 0 else ("mapped", "read"):
                done = subprocess.run(
                    [sys.executable, "-c", CHILD, str(path), "1" if arm == "mapped" else "0"],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                result = json.loads(done.stdout.strip().splitlines()[-1])
                growth[arm].append(result["anon_mib"])
                rows[arm] = result["rows"]
    same = rows["read"] == rows["mapped"]
    print(f"graph file {size_mib:.0f} MiB; faiss {faiss.__version__}")
    print(f"{'open':8} {'private memory added, MiB (each run)':>40}")
    for arm, values in growth.items():
        print(f"{arm:8} {' '.join(f'{v:8.1f}' for v in values):>40}")
    print(f"same neighbours for 20 queries: {same}")
    write_json(
        args.out,
        {
            "machine": machine(),
            "faiss": faiss.__version__,
            "args": {k: str(v) for k, v in vars(args).items()},
            "file_mib": round(size_mib, 1),
            "anon_mib_added": growth,
            "same_neighbours": same,
        },
    )
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
