from __future__ import annotations

from pathlib import Path

import pytest

from hybrid.errors import JavaNotFoundError
from hybrid.java import anserini_jar, find_java_home, java_version


def fake_jdk(root: Path, name: str, version: str) -> Path:
    home = root / name
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "java").write_text("#!/bin/sh\n")
    (home / "release").write_text(f'IMPLEMENTOR="x"\nJAVA_VERSION="{version}"\n')
    return home


def test_version_from_release_file(tmp_path: Path) -> None:
    assert java_version(fake_jdk(tmp_path, "a", "21.0.4")) == 21
    assert java_version(fake_jdk(tmp_path, "b", "1.8.0_392")) == 8


def test_prefers_new_enough_java_home_then_newest_found(tmp_path: Path) -> None:
    old = fake_jdk(tmp_path, "jdk17", "17.0.15")
    fake_jdk(tmp_path, "jdk21", "21.0.2")
    newest = fake_jdk(tmp_path, "jdk25", "25.0.3")
    pattern = (str(tmp_path / "*"),)
    assert find_java_home(str(old), pattern) == (newest, 25)
    mid = tmp_path / "jdk21"
    assert find_java_home(str(mid), pattern) == (mid, 21)


def test_no_java_says_what_to_install(tmp_path: Path) -> None:
    fake_jdk(tmp_path, "jdk17", "17.0.15")
    with pytest.raises(JavaNotFoundError, match=r"needs Java 21\+ .* install one"):
        find_java_home(None, (str(tmp_path / "*"),))


def test_anserini_jar_is_found_without_importing_pyserini() -> None:
    import sys

    jar = anserini_jar()
    assert jar.name.startswith("anserini-") and jar.suffix == ".jar"
    assert "pyserini" not in sys.modules or "pyserini.search" not in sys.modules
