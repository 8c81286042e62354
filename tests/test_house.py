"""The house stays walkable: a short README whose links exist, no import circles in the
library or the CLI, and no function too long to read at once."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"


def test_readme_is_at_most_250_lines() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move details to docs/"


def test_one_install_command_and_one_test_command() -> None:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert sum("pip install" in block for block in blocks) == 1
    assert [block for block in blocks if block.strip() == "pytest"] == ["pytest\n"]


def test_every_local_file_the_readme_links_exists() -> None:
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text(encoding="utf-8"))
    local = [t for t in targets if "://" not in t]
    assert any(t.startswith("docs/") for t in local), "the README should point to docs/"
    missing = [t for t in local if not (REPO / t).exists()]
    assert missing == [], f"README.md links to files that do not exist: {missing}"


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the library and the CLI (as installed)."""
    found = {}
    for folder, package in (("hybrid", "hybrid"), ("cli", "hybrid.cli")):
        for path in (REPO / folder).rglob("*.py"):
            parts = [p for p in path.relative_to(REPO / folder).with_suffix("").parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Modules of ours that ``name`` imports, at module level or inside functions (imports
    only for type checking, and a module's own parent packages, do not count)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base) if node.level else str(node.module)
            out.add(module)
            out.update(f"{module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    return {m for m in out if m in known and m != name and m not in ancestors}


def test_no_import_circles() -> None:
    known = _modules()
    graph = {name: _imports(name, path, known) for name, path in known.items()}
    circles = []
    for start in graph:  # a path from a module back to itself
        seen, frontier = set(), [(start, [start])]
        while frontier:
            node, trail = frontier.pop()
            for nxt in graph[node]:
                if nxt == start:
                    circles.append(" -> ".join([*trail, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    frontier.append((nxt, [*trail, nxt]))
    assert circles == [], "import circles:\n" + "\n".join(sorted(set(circles))[:10])


def test_no_function_over_60_lines() -> None:
    """Counted from ``def`` to the last line, signature and docstring included: a command
    with a long signature declares its options once, in a table (cli/common.option_group)."""
    long = []
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1 if node.end_lineno else 0
                if lines > 60:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == [], "split these by responsibility:\n" + "\n".join(sorted(long))
