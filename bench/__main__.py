"""The benchmarks' one entry point.

    python -m bench              # every benchmark, with what it measures
    python -m bench NAME [args]  # run one (NAME --help for its options)

A benchmark is a module of this package with a ``main()``; its docstring's first line is
its description, and the rest of the docstring says what it runs and writes. Run from the
repository root (they read ../shared/datasets and write bench/results/). The figures they
produced, each with its command and machine, are in docs/benchmarks.md.
"""

from __future__ import annotations

import ast
import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOT_BENCHMARKS = {"__init__", "__main__", "common"}


def benchmarks() -> dict[str, str]:
    """``{name: one-line description}`` of every benchmark module, read without importing it."""
    found = {}
    for path in sorted(HERE.glob("*.py")):
        if path.stem in NOT_BENCHMARKS:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if not any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body):
            continue
        doc = (ast.get_docstring(tree) or "").strip().splitlines()
        found[path.stem] = (doc[0] if doc else "").removeprefix("Benchmark: ")
    return found


def main(argv: list[str]) -> int:
    known = benchmarks()
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[0] + "\n\nusage: python -m bench NAME [args]  (NAME --help)\n")
        width = max(len(name) for name in known)
        for name, description in known.items():
            print(f"  {name:<{width}}  {description}")
        return 0
    name, args = argv[0], argv[1:]
    if name not in known:
        print(f"Error: no benchmark '{name}'; run 'python -m bench' to list them", file=sys.stderr)
        return 2
    sys.path.insert(0, str(HERE.parent))  # the scripts import bench.common
    sys.argv = [f"python -m bench {name}", *args]  # argparse shows it as the program's name
    runpy.run_module(f"bench.{name}", run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
