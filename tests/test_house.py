"""The README stays a front door: short, and every document it points to exists."""

from __future__ import annotations

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
