"""Benchmark: what an ES bulk request for a refresh carries, text against vector.

    python -m bench es_payload [--docs 5000] [--dims 384]

A refresh on ES writes each document again (id, title, text and the new vector) into the
new version's physical index. Writing only the vector field would save the text's bytes;
this measures how much of the request that is, on real passages (MS MARCO DL19 pool, NQ)
serialized by the ES client's own JSON serializer exactly as ``ElasticWriter`` sends them,
with unit vectors of ``--dims`` float32 values (``vec.tolist()``, as sent). It also
times the alternative vector text (shortest float32 repr, ~40 % shorter, exact), which
costs client time. Writes bench/results/es_payload.json.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, SHARED, machine, write_json

CORPORA = {
    "msmarco-dl19-pool": SHARED / "msmarco-trec-dl19-pool" / "collection.tsv",
    "nq-open-oracle": SHARED / "nq-open-oracle" / "passages.tsv",
}


def main() -> int:
    import numpy as np
    from elasticsearch.serializer import JsonSerializer

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=5000)
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "es_payload.json")
    args = parser.parse_args()
    serializer = JsonSerializer()

    def size(obj: Any) -> int:
        data = serializer.dumps(obj)
        return len(data if isinstance(data, bytes) else data.encode())

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.docs, args.dims)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    started = time.perf_counter()
    as_sent = [size({"vector": v.tolist()}) for v in vectors]
    sent_s = time.perf_counter() - started
    started = time.perf_counter()
    short = [size({"vector": row}) for row in vectors.astype(str).astype(np.float64).tolist()]
    short_s = time.perf_counter() - started
    vector_b = float(np.mean(as_sent))
    rows = []
    print(f"{'corpus':20} {'doc fields B':>12} {'vector B':>9} {'text share':>10}")
    for name, path in CORPORA.items():
        if not path.is_file():
            print(f"{name:20} (missing: {path})")
            continue
        docs = []
        with path.open(newline="") as fh:
            for row in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
                if len(row) >= 2 and row[0] != "id":
                    docs.append({"id": row[0], "title": row[2] if len(row) > 2 else "", "text": row[1]})
                if len(docs) >= args.docs:
                    break
        fields_b = float(np.mean([size(d) for d in docs]))
        share = fields_b / (fields_b + vector_b)
        rows.append({"corpus": name, "docs": len(docs), "doc_fields_bytes": round(fields_b), "text_share": share})
        print(f"{name:20} {fields_b:12.0f} {vector_b:9.0f} {share:10.1%}")
    print(
        f"vector as sent {vector_b:.0f} B ({sent_s / args.docs * 1e3:.2f} ms/doc to serialize); shortest float32 "
        f"repr {np.mean(short):.0f} B ({short_s / args.docs * 1e3:.2f} ms/doc)"
    )
    write_json(
        args.out,
        {
            "machine": machine(),
            "args": {k: str(v) for k, v in vars(args).items()},
            "vector_bytes": round(vector_b),
            "vector_ms_per_doc": round(sent_s / args.docs * 1e3, 3),
            "short_vector_bytes": round(float(np.mean(short))),
            "short_vector_ms_per_doc": round(short_s / args.docs * 1e3, 3),
            "rows": rows,
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
