"""Benchmark: `hybrid serve` under concurrent clients, and a version swap under load.

    python -m bench serve [--backends embedded,es] [--clients 1,4,16] [--seconds 15]
                          [--dataset DIR] [--limit N] [--no-swap] [--store DIR --index NAME]
                          [--es-url URL] [--out bench/results/serve.json]

A dataset in BEIR layout (default SciFact, 5,183 passages, ../shared/datasets/scifact;
--limit N: its first N passages) is indexed with `hybrid index`'s defaults on each
backend (ES: a node started from tests/es_node.py unless --es-url; the index gets a name
of its own and is dropped at the end; embedded: --store and --index name an index built
before, from the same dataset, which is then used as it is and kept), then `hybrid serve`
runs as its own process on loopback. For each client count and each mode (bm25, dense, hybrid RRF) in turn, that
many concurrent clients (one asyncio process, each sending its next request when the last
one returns, cycling through the test queries, else the dev queries) load the server for
--seconds after a short warm-up: requests/s and p50/p95/p99 latency.

The ceiling a server can reach is its query encoder's. The index's encoder, loaded as the
server loads it, is timed alone in this process (batches of 32, the server's micro-batch,
then one query at a time) before the first client count and after each, and each row
reports its requests/s over the mean batched rate of the two timings around its client
count: ratios of figures measured minutes apart at most. One client's dense p50 is also
given over one query's encode time (the mean p50 of the two timings around its block),
and over that of the same model with ONNX Runtime's busy-waiting threads (timed once,
before the first client count), which the server turns off. Then (unless --no-swap) a swap
run: 4 clients send hybrid queries while `hybrid index --recreate -m MODEL` rebuilds the
index in another process with a model the server has never seen (MiniLM's weights nudged),
and the alias moves; it reports errors (the goal is 0), the (version, model) pairs the
responses named, and p99 and max latency during the swap next to 5 s of steady state
before it. Writes bench/results/serve.json.

    python -m bench serve --collectors serial,g1 [--rounds 2] [--out bench/results/serve_gc.json]

compares the garbage collectors of the server's in-process JVM on the embedded store
instead: one index, an untimed server (it exports the ONNX query graph once, so no timed
server pays for torch), then a fresh server per arm, the arms taking turns over --rounds
(use an even number), each loaded as above (no swap run), with the server's peak
anonymous memory sampled every 20 ms. "serial" is what hybrid gives a JVM it starts to
search; "g1" is set the user's way, JAVA_TOOL_OPTIONS=-XX:+UseG1GC (the caller's
JAVA_TOOL_OPTIONS and _JAVA_OPTIONS are removed); each server's collector is read from its
thread names and a mismatch stops the run. Writes bench/results/serve_gc.json and prints
a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, SHARED, machine, percentile, write_json

SCIFACT = SHARED / "scifact"
MODES = ("bm25", "dense", "hybrid")
HYBRID = [sys.executable, "-m", "hybrid.cli"]


def test_queries(dataset: Path = SCIFACT) -> list[str]:
    """The dataset's test queries (its dev queries where the test split is withheld)."""
    from hybrid.corpus import read_qrels

    split = next(
        dataset / "qrels" / f"{name}.tsv" for name in ("test", "dev") if (dataset / "qrels" / f"{name}.tsv").is_file()
    )
    wanted = set(read_qrels(split))
    rows = [json.loads(line) for line in (dataset / "queries.jsonl").open()]
    return [r["text"] for r in rows if str(r["_id"]) in wanted]


def query_encoder(where: list[str], index: str, *, spin: bool = False) -> Any:
    """The index's query encoder, loaded as ``hybrid serve`` loads it (its threads sleep
    between batches); ``spin``: with ONNX Runtime's default, busy-waiting threads instead."""
    from hybrid.backends import open_backend
    from hybrid.config import ElasticConfig
    from hybrid.manifest import VectorRecipe
    from hybrid.query_encoder import open_query_encoder
    from hybrid.serving.engine import server_encoder

    es = ElasticConfig(url=where[1]) if where[0] == "--es-url" else None
    backend = open_backend(es, None if es else Path(where[1]))
    try:
        info = backend.info(index)
    finally:
        backend.close()
    recipe = VectorRecipe.from_dict(info.recipe)
    if spin:
        return open_query_encoder(None if recipe else info.model, recipe=recipe, batch=True)
    return server_encoder(recipe, info.model)


def encoder_only(encoder: Any, queries: list[str], seconds: float) -> dict[str, float]:
    """``encoder`` alone in this process: queries/s in batches of 32 (the server's
    micro-batch) for half of ``seconds``, then one query at a time (with its p50)."""
    out: dict[str, float] = {}
    for size in (32, 1):
        batches = [queries[i : i + size] for i in range(0, len(queries) - size + 1, size)]
        encoder.encode_queries(batches[0])  # warm-up
        took: list[float] = []
        cpu = cpu_seconds({"me": os.getpid()})["me"]
        start = time.perf_counter()
        while time.perf_counter() - start < seconds / 2:
            began = time.perf_counter()
            encoder.encode_queries(batches[len(took) % len(batches)])
            took.append(time.perf_counter() - began)
        out[f"batch{size}_qps"] = round(len(took) * size / (time.perf_counter() - start), 1)
        used = cpu_seconds({"me": os.getpid()})["me"] - cpu
        out[f"batch{size}_cpu_us_per_query"] = round(used / (len(took) * size) * 1e6)
    out["batch1_p50_ms"] = round(percentile(took, 0.5) * 1000, 2)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


LIMIT: list[str] = []  # --limit N
DATASET: list[Path] = [SCIFACT]  # --dataset
INDEX: list[str] = ["scifact"]  # ES: a name of this run's own


def run_cli(args: list[str], where: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([*HYBRID, *args, *LIMIT, *where, "-q"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


class Server:
    """`hybrid serve` in its own process."""

    def __init__(self, where: list[str], index: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [*HYBRID, "serve", "-i", index, *where, "--port", str(self.port), "--no-access-log", "--poll", "0.5"]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
        )
        import httpx

        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"hybrid serve exited: {self.proc.stderr.read() if self.proc.stderr else ''}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("hybrid serve did not become ready")
            time.sleep(0.3)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


class Connection:
    """A keep-alive HTTP/1.1 connection that POSTs JSON: a few microseconds of client CPU per
    request, so on a small machine the load generator does not take the cores it measures."""

    def __init__(self, url: str) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, payload: dict[str, Any]) -> tuple[int, Any]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        body = json.dumps(payload).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        status_line, *headers = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        length = next(int(h.split(":", 1)[1]) for h in headers if h.lower().startswith("content-length:"))
        data = await self.reader.readexactly(length)
        if any(h.lower() == "connection: close" for h in headers):
            await self.close()
        return int(status_line.split()[1]), json.loads(data)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU time (user + system, all threads) each process has used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {}
    for name, pid in pids.items():
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        used[name] = (int(fields[11]) + int(fields[12])) / tick
    return used


async def load(
    url: str,
    mode: str,
    clients: int,
    seconds: float,
    queries: list[str],
    warmup: float = 2.0,
    pids: dict[str, int] | None = None,
) -> dict:
    """``clients`` closed-loop clients for ``seconds`` (after ``warmup``): throughput and
    latency, and the CPU each of ``pids`` and these clients used per request meanwhile."""
    latencies: list[float] = []
    errors: list[str] = []
    pairs: dict[str, int] = {}
    counter = iter(range(10**9))
    started = time.perf_counter()
    measure_from = started + warmup
    stop_at = measure_from + seconds

    async def client() -> None:
        http = Connection(url)
        try:
            while (now := time.perf_counter()) < stop_at:
                query = queries[next(counter) % len(queries)]
                try:
                    status, body = await http.post("/search", {"query": query, "mode": mode, "k": 10, "fields": []})
                    ok = status == 200
                except (OSError, asyncio.IncompleteReadError, ValueError, StopIteration) as exc:
                    ok, body = False, {"error": f"{type(exc).__name__}: {exc}"}
                    await http.close()
                done = time.perf_counter()
                if now >= measure_from:
                    if ok:
                        latencies.append(done - now)
                        key = f"{body['version']} {body['model_hash']}"
                        pairs[key] = pairs.get(key, 0) + 1
                    else:
                        errors.append(str(body.get("error", body) if isinstance(body, dict) else body)[:200])
        finally:
            await http.close()

    watched = {**(pids or {}), "clients": os.getpid()}

    async def cpu_at_start() -> dict[str, float]:
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        return cpu_seconds(watched)

    first = asyncio.create_task(cpu_at_start())
    await asyncio.gather(*(client() for _ in range(clients)))
    used = cpu_seconds(watched)
    begun = await first
    per_request = {k: round((used[k] - begun[k]) / max(len(latencies), 1) * 1e6) for k in watched}
    return {
        "cpu_us_per_request": per_request,
        "mode": mode,
        "clients": clients,
        "requests": len(latencies),
        "rps": round(len(latencies) / seconds, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 1),
        "p95_ms": round(percentile(latencies, 0.95) * 1000, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "max_ms": round(max(latencies, default=0.0) * 1000, 1),
        "latencies": latencies,
        "errors": len(errors),
        "first_errors": errors[:3],
        "pairs": pairs,
    }


def unseen_model(folder: Path) -> Path:
    """all-MiniLM-L6-v2 with its weights nudged: same shape, a hash no server has loaded, so a
    swap to it makes the server load and export a model it has never seen."""
    import shutil

    import torch
    from transformers import AutoModel

    from hybrid.encoder import default_model_dir

    source = default_model_dir()
    shutil.copytree(source, folder, dirs_exist_ok=True)
    model = AutoModel.from_pretrained(str(source), local_files_only=True)
    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(1e-4 * torch.randn_like(param))
    model.save_pretrained(str(folder))
    return folder


def swap_run(url: str, where: list[str], queries: list[str]) -> dict[str, Any]:
    """Hybrid load from 4 clients while another process rebuilds the index with a model the
    server has never seen and swaps it: latency during the swap against steady state."""
    import tempfile

    result: dict[str, Any] = {}
    steady = asyncio.run(load(url, "hybrid", 4, 5, queries))
    model = unseen_model(Path(tempfile.mkdtemp(prefix="hybrid-bench-unseen-")) / "model")

    def rebuild() -> None:
        time.sleep(3)
        args = ["index", str(DATASET[0]), "-i", INDEX[0], "--recreate", "-m", str(model), "--grace", "120"]
        result["rebuild_s"] = round(run_cli(args, where), 1)

    thread = threading.Thread(target=rebuild)
    thread.start()
    # long enough to cover the rebuild; measured from the start, no warm-up
    seconds = 0.0
    runs = []
    while thread.is_alive() or seconds == 0.0:
        runs.append(asyncio.run(load(url, "hybrid", 4, 10, queries, warmup=0)))
        seconds += 10
    runs.append(asyncio.run(load(url, "hybrid", 4, 5, queries, warmup=0)))  # after the swap
    thread.join()
    pairs: dict[str, int] = {}
    for run in runs:
        for key, n in run["pairs"].items():
            pairs[key] = pairs.get(key, 0) + n
    during = [x for run in runs for x in run.pop("latencies")]
    steady_latencies = steady.pop("latencies")
    return {
        "steady_p99_ms": steady["p99_ms"],
        "steady_max_ms": round(max(steady_latencies, default=0.0) * 1000, 1),
        "swap_p99_ms": round(percentile(during, 0.99) * 1000, 1),
        "swap_max_ms": round(max(during, default=0.0) * 1000, 1),
        "clients": 4,
        "mode": "hybrid",
        "seconds": seconds + 5,
        "requests": sum(r["requests"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "first_errors": [e for r in runs for e in r["first_errors"]][:3],
        "pairs": pairs,
        **result,
    }


def bench_backend(
    kind: str, where: list[str], args: argparse.Namespace, queries: list[str], node_pid: int | None = None
) -> dict[str, Any]:
    """Index, then per client count the encoder alone and each mode served, in turn, so
    that the ratios compare figures measured minutes apart at most on a shared machine.
    Each row gives the CPU per request of the server, the clients and ``node_pid`` (an
    Elasticsearch node this run started), all on the same cores."""
    index_s = None
    if kind == "es" or not args.store:  # --store names an embedded index only
        print(f"== {kind}: indexing {DATASET[0].name}", flush=True)
        index_s = round(run_cli(["index", str(DATASET[0]), "-i", INDEX[0], "--recreate"], where), 1)
    encoder = query_encoder(where, INDEX[0])
    timed = [encoder_only(encoder, queries, ENCODER_SECONDS)]
    # The same model with ONNX Runtime's busy-waiting threads, one query at a time: what
    # the server gives up at one client for the cores it frees under load.
    spinning = encoder_only(query_encoder(where, INDEX[0], spin=True), queries, ENCODER_SECONDS)
    timed[0]["spinning_batch1_p50_ms"] = spinning["batch1_p50_ms"]
    print(json.dumps({kind: {"encoder_only": timed[-1]}}), flush=True)
    server = Server(where, INDEX[0])
    rows, swap = [], None
    try:
        for clients in (int(c) for c in args.clients.split(",")):
            pids = {"server": server.proc.pid, **({"node": node_pid} if node_pid else {})}
            block = [asyncio.run(load(server.url, mode, clients, args.seconds, queries, pids=pids)) for mode in MODES]
            timed.append(encoder_only(encoder, queries, ENCODER_SECONDS))
            ceiling = (timed[-2]["batch32_qps"] + timed[-1]["batch32_qps"]) / 2  # around this block
            for row in block:
                row.pop("latencies")
                row["over_encoder"] = round(row["rps"] / ceiling, 2)
                keys = ("mode", "clients", "rps", "over_encoder", "p50_ms", "cpu_us_per_request")
                print(json.dumps({kind: {k: row[k] for k in keys}}))
            print(json.dumps({kind: {"encoder_only": timed[-1]}}), flush=True)
            rows.extend(block)
        if args.swap:
            swap = swap_run(server.url, where, queries)
            keys = ("requests", "errors", "steady_p99_ms", "swap_p99_ms", "swap_max_ms", "pairs")
            print(json.dumps({kind: {"swap": {k: swap[k] for k in keys}}}), flush=True)
    finally:
        server.stop()
    return {"index_s": index_s, "encoder_only": timed, "rows": rows, "swap": swap}


ENCODER_SECONDS = 8.0  # per timing of the encoder alone, half batched, half one by one


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """16-client throughput over 1-client; hybrid p50 over dense p50; at the most clients,
    each mode's requests/s over the encoder alone and hybrid's over dense's."""
    rows = {(r["mode"], r["clients"]): r for r in result["rows"]}
    most = max(c for _, c in rows)
    out: dict[str, Any] = {}
    for mode in ("dense", "hybrid"):
        if (mode, 1) in rows and (mode, most) in rows:
            out[f"{mode}_scaling_{most}_over_1"] = round(rows[(mode, most)]["rps"] / rows[(mode, 1)]["rps"], 2)
    for clients in sorted({c for _, c in rows}):
        if ("hybrid", clients) in rows and ("dense", clients) in rows:
            ratio = rows[("hybrid", clients)]["p50_ms"] / rows[("dense", clients)]["p50_ms"]
            out[f"hybrid_over_dense_p50_at_{clients}"] = round(ratio, 2)
    for mode in MODES:
        if (mode, most) in rows and "over_encoder" in rows[(mode, most)]:
            out[f"{mode}_over_encoder_at_{most}"] = rows[(mode, most)]["over_encoder"]
    if ("dense", 1) in rows:  # one client's dense p50 over one query's encode (the encoder as served)
        at = list(dict.fromkeys(r["clients"] for r in result["rows"])).index(1)  # its block's timings
        around = result["encoder_only"][at : at + 2]
        encode = sum(e["batch1_p50_ms"] for e in around) / len(around)
        out["dense_p50_over_encode_at_1"] = round(rows[("dense", 1)]["p50_ms"] / encode, 2)
        if "spinning_batch1_p50_ms" in result["encoder_only"][0]:
            spinning = result["encoder_only"][0]["spinning_batch1_p50_ms"]
            out["dense_p50_over_spinning_encode_at_1"] = round(rows[("dense", 1)]["p50_ms"] / spinning, 2)
    if ("hybrid", most) in rows and ("dense", most) in rows:
        out[f"hybrid_over_dense_rps_at_{most}"] = round(rows[("hybrid", most)]["rps"] / rows[("dense", most)]["rps"], 2)
    return out


# issue #23's goals: (summary key, at least / at most, value)
TARGETS = (
    ("dense_over_encoder_at_16", ">=", 0.8),
    ("hybrid_over_encoder_at_16", ">=", 0.6),
    ("hybrid_over_dense_rps_at_16", ">=", 0.75),
    ("hybrid_over_dense_p50_at_1", "<=", 1.5),
    # against the encoder as the server runs it (threads sleeping between batches); the
    # summary also gives the ratio to a busy-waiting encoder, which no goal reads
    ("dense_p50_over_encode_at_1", "<=", 2.0),
)


def targets(summary: dict[str, Any]) -> list[str]:
    """One line per goal whose figure this run has: the figure, the goal, met or not."""
    lines = []
    for key, sense, goal in TARGETS:
        if key in summary:
            met = summary[key] >= goal if sense == ">=" else summary[key] <= goal
            lines.append(f"{key} = {summary[key]} (goal {sense} {goal}): {'met' if met else 'NOT met'}")
    return lines


def print_table(results: dict[str, Any]) -> None:
    print("| backend | mode | clients | req/s | over encoder | p50 ms | p95 ms | p99 ms | errors | CPU µs/request |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind, result in results["backends"].items():
        for r in result["rows"]:
            cpu = ", ".join(f"{k} {v}" for k, v in r.get("cpu_us_per_request", {}).items())
            print(
                f"| {kind} | {r['mode']} | {r['clients']} | {r['rps']} | {r.get('over_encoder')} | {r['p50_ms']} "
                f"| {r['p95_ms']} | {r['p99_ms']} | {r['errors']} | {cpu} |"
            )
    for kind, result in results["backends"].items():
        timings = "; ".join(
            f"{e['batch32_qps']} q/s in batches of 32 ({e.get('batch32_cpu_us_per_query')} µs CPU a query), "
            f"{e['batch1_qps']} one by one (p50 {e['batch1_p50_ms']} ms)"
            for e in result["encoder_only"]
        )
        print(f"{kind}: encoder alone, before the first client count and after each: {timings}")
        swap = result["swap"]
        if swap is not None:
            print(
                f"{kind}: swap under load: {swap['requests']} requests, {swap['errors']} errors, "
                f"(version, model) pairs {swap['pairs']}; rebuild {swap.get('rebuild_s')} s"
            )
        print(f"{kind}: {result['summary']}")
        for line in targets(result["summary"]):
            print(f"{kind}: {line}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="embedded,es")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--dataset", type=Path, default=SCIFACT, help="BEIR layout; default SciFact")
    parser.add_argument("--limit", type=int, default=None, help="index only this many passages")
    parser.add_argument("--swap", action=argparse.BooleanOptionalAction, default=True, help="the swap run")
    parser.add_argument("--store", type=Path, default=None, help="embedded: an existing store (with --index)")
    parser.add_argument("--index", default="scifact", help="with --store: the index in it")
    parser.add_argument("--es-url", default=None, help="existing node; default: start ES 9 from tests/es_node.py")
    parser.add_argument("--collectors", default=None, help="compare the server JVM's collectors, e.g. serial,g1")
    parser.add_argument("--rounds", type=int, default=2, help="with --collectors: rounds of the arms")
    parser.add_argument("--out", type=Path, default=None, help="default bench/results/serve.json (serve_gc.json)")
    args = parser.parse_args()
    if args.store and args.swap:
        parser.error("--store takes --no-swap: the swap run would rebuild that index")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    DATASET[0] = args.dataset
    queries = test_queries(args.dataset)
    if args.limit:
        LIMIT.extend(["--limit", str(args.limit)])
    if args.collectors:
        from bench.serve_gc import compare_collectors

        compare_collectors(args, queries)
        return 0
    args.out = args.out or REPO / "bench" / "results" / "serve.json"
    results: dict[str, Any] = {
        "machine": machine(),
        "seconds": args.seconds,
        "dataset": args.dataset.name,
        "limit": args.limit,
        "store": str(args.store) if args.store else None,
        "queries": len(queries),
        "backends": {},
    }
    for kind in args.backends.split(","):
        results["backends"][kind] = run_backend(kind, args, queries)
        for result in results["backends"].values():
            result["summary"] = summary(result)
        write_json(args.out, results)
    print_table(results)
    return 0


def run_backend(kind: str, args: argparse.Namespace, queries: list[str]) -> dict[str, Any]:
    """:func:`bench_backend` on a store of its own (removed after) or on an ES node, under an
    index name of this run's own that is dropped after."""
    if kind == "embedded" and args.store:
        INDEX[0] = args.index
        return bench_backend(kind, ["--store", str(args.store)], args, queries)
    if kind == "embedded":
        work = Path(tempfile.mkdtemp(prefix="hybrid-bench-serve-"))
        INDEX[0] = "scifact"
        try:
            return bench_backend(kind, ["--store", str(work / "store")], args, queries)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    from hybrid.backends.elastic import ElasticBackend
    from hybrid.config import ElasticConfig
    from tests import es_node

    node = None if args.es_url else es_node.start(es_node.ES9)
    url = args.es_url or str(node["url"])  # type: ignore[index]
    INDEX[0] = f"hybrid-bench-serve-{os.getpid()}"  # the node may be shared
    try:
        node_pid = int(str(node["pid"])) if node is not None else None
        return bench_backend(kind, ["--es-url", url], args, queries, node_pid)
    finally:
        backend = ElasticBackend(ElasticConfig(url=url))
        backend.drop(INDEX[0])
        backend.close()
        if node is not None:
            es_node.stop(node)


if __name__ == "__main__":
    sys.exit(main())
