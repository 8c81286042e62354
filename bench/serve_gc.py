"""The collector comparison of ``python -m bench serve --collectors`` (its docstring says
what it runs): fresh `hybrid serve` processes on one embedded index, one JVM collector
per arm, the arms taking turns."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from bench.common import REPO, PeakAnon, machine, percentile, write_json
from bench.serve import MODES, SCIFACT, Server, load, run_cli


def compare_collectors(args: argparse.Namespace, queries: list[str]) -> None:
    """Run the arms named by ``args.collectors``; write serve_gc.json, print a table."""
    out = args.out or REPO / "bench" / "results" / "serve_gc.json"
    work = Path(tempfile.mkdtemp(prefix="hybrid-bench-serve-"))
    result = {"machine": machine(), "seconds": args.seconds, "queries": len(queries)}
    result.update(collector_arms(args, queries, work))
    write_json(out, result)
    print_collectors(result)


THREAD_PREFIXES = {"G1 ": "g1", "GC Thread": "parallel", "ZDriver": "z", "Shenandoah": "shenandoah"}
# hybrid's own choice for a searching JVM, and G1 set the user's way (which wins)
COLLECTOR_ENV = {"serial": {}, "g1": {"JAVA_TOOL_OPTIONS": "-XX:+UseG1GC"}}


def server_collector(server: Server) -> str:
    """Which collector the server's JVM runs, from its thread names: G1, Parallel, ZGC
    and Shenandoah name their threads; the serial collector has none of its own."""
    names = set()
    for comm in Path(f"/proc/{server.proc.pid}/task").glob("*/comm"):
        with contextlib.suppress(OSError):
            names.add(comm.read_text().strip())
    for prefix, name in THREAD_PREFIXES.items():
        if any(n.startswith(prefix) for n in names):
            return name
    return "serial"


def collector_server(where: list[str], arm: str) -> Server:
    """A server whose JVM runs ``arm``'s collector, or an exit."""
    from hybrid.java import USER_OPTIONS

    env = {k: v for k, v in os.environ.items() if k not in USER_OPTIONS}  # the caller's would decide
    server = Server(where, "scifact", {**env, **COLLECTOR_ENV[arm]})
    if (found := server_collector(server)) != arm:
        server.stop()
        raise SystemExit(f"the {arm} arm's server runs {found}")
    return server


def collector_arms(args: argparse.Namespace, queries: list[str], work: Path) -> dict[str, Any]:
    """Fresh servers on one embedded index, one per collector, the arms taking turns."""
    arms = args.collectors.split(",")
    unknown = [a for a in arms if a not in COLLECTOR_ENV]
    if unknown:
        raise SystemExit(f"--collectors takes {', '.join(COLLECTOR_ENV)}, not {', '.join(unknown)}")
    where = ["--store", str(work / "store")]
    print("== embedded: indexing SciFact", flush=True)
    run_cli(["index", str(SCIFACT), "-i", "scifact", "--recreate"], where)
    server = collector_server(where, arms[0])  # untimed: the first search exports the ONNX query graph
    for mode in MODES:
        asyncio.run(load(server.url, mode, 1, 1, queries, warmup=0))
    server.stop()
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    for round_ in range(args.rounds):
        for arm in arms if round_ % 2 == 0 else arms[::-1]:
            server = collector_server(where, arm)
            peak = PeakAnon(server.proc.pid).start()  # the server's own pages: heaps, not mapped files
            rows = []
            try:
                ready_anon = peak.sample()
                collector = server_collector(server)
                for mode in MODES:
                    for clients in (int(c) for c in args.clients.split(",")):
                        row = asyncio.run(load(server.url, mode, clients, args.seconds, queries))
                        row.pop("latencies")
                        print(json.dumps({arm: {k: row[k] for k in ("mode", "clients", "rps", "p50_ms", "p99_ms")}}))
                        rows.append(row)
            finally:
                peak.stop()
                server.stop()
            run = {
                "round": round_,
                "collector": collector,
                "ready_anon_mib": round(ready_anon, 1),
                "peak_anon_mib": round(peak.mib, 1),
            }
            print(json.dumps({arm: run}), flush=True)
            runs[arm].append({**run, "rows": rows})
    return {"arms": runs, "summary": collector_summary(runs)}


def collector_summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians over rounds per arm, and each arm over the first."""

    def median(values: list[float]) -> float:
        return round(percentile(values, 0.5), 2)  # of values with 1 decimal: no rounding of ties

    out: dict[str, Any] = {}
    for arm, arm_runs in runs.items():
        cells: dict[str, list[float]] = {}
        for run in arm_runs:
            cells.setdefault("peak_anon_mib", []).append(run["peak_anon_mib"])
            for r in run["rows"]:
                for key in ("rps", "p50_ms", "p99_ms"):
                    cells.setdefault(f"{r['mode']}/{r['clients']}/{key}", []).append(r[key])
        out[arm] = {key: median(values) for key, values in cells.items()}
    first = next(iter(out))
    for arm in list(out)[1:]:
        out[f"{first}_over_{arm}"] = {
            key: round(value / out[arm][key], 2) for key, value in out[first].items() if out[arm][key]
        }
    return out


def print_collectors(result: dict[str, Any]) -> None:
    """Each (mode, clients) row: medians of each arm, and the first arm over the second."""
    summary = result["summary"]
    arms = list(result["arms"])
    first, second = arms[0], arms[-1]
    ratio = summary.get(f"{first}_over_{second}", {})
    print(f"| mode | clients | req/s {first} | req/s {second} | ratio | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|---|---|")
    errors: dict[str, dict[str, int]] = {arm: {} for arm in arms}
    for arm in arms:
        for run in result["arms"][arm]:
            for r in run["rows"]:
                key = f"{r['mode']}/{r['clients']}"
                errors[arm][key] = errors[arm].get(key, 0) + r["errors"]
    for key in errors[first]:
        a, b = summary[first], summary[second]
        print(
            f"| {key.replace('/', ' | ')} | {a[key + '/rps']} | {b[key + '/rps']} | {ratio.get(key + '/rps')} "
            f"| {a[key + '/p50_ms']} / {b[key + '/p50_ms']} | {a[key + '/p99_ms']} / {b[key + '/p99_ms']} "
            f"| {errors[first][key]} / {errors[second][key]} |"
        )
    for arm in arms:
        runs = result["arms"][arm]
        peaks = ", ".join(str(r["peak_anon_mib"]) for r in runs)
        ready = ", ".join(str(r["ready_anon_mib"]) for r in runs)
        print(
            f"{arm}: peak anonymous MiB {summary[arm]['peak_anon_mib']} (rounds {peaks}; ready {ready}), "
            f"collector {', '.join(r['collector'] for r in runs)}"
        )
    print(f"{first} over {second}, peak anonymous memory: {ratio.get('peak_anon_mib')}")
