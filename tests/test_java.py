from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from hybrid.errors import JavaNotFoundError
from hybrid.java import anserini_jar, find_java_home, java_version
from tests.processes import session_members


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


SEARCH_CHILD = """
import json, sys
from pathlib import Path
from hybrid.backends.embedded.lucene import LuceneSearcher
from hybrid.config import LexicalSettings
from hybrid.java import start_jvm
if sys.argv[2] == "search":
    searcher = LuceneSearcher(Path(sys.argv[1]), LexicalSettings(), None)
    hits = searcher.search(["heart cholesterol"], 3)[0]
elif sys.argv[2] == "build":
    from hybrid.backends.embedded.lucene import build_lucene
    from hybrid.types import Document
    hits = build_lucene(Path(sys.argv[1]), [[Document("a", "heart")]], LexicalSettings(), None)
else:
    start_jvm(None)
    hits = []
from jnius import autoclass
beans = autoclass("java.lang.management.ManagementFactory").getGarbageCollectorMXBeans()
print(json.dumps({"hits": hits, "collector": [beans.get(i).getName() for i in range(beans.size())]}))
"""


def _child(index: Path, what: str, **env: str) -> dict[str, Any]:
    """Run SEARCH_CHILD in its own session; it must exit leaving no process and no notice behind."""
    import json
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-c", SEARCH_CHILD, str(index), what],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
        start_new_session=True,
    )
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    # nothing but the JVM's line naming the user's options reaches the user
    assert [line for line in stderr.splitlines() if not line.startswith("Picked up ")] == []
    assert session_members(proc.pid) == [], "the process left others running"
    return json.loads(stdout)  # type: ignore[no-any-return]


def test_a_jvm_started_to_search_runs_the_serial_collector_and_one_started_to_index_g1(tmp_path: Path) -> None:
    # G1 sizes a searching JVM's committed heap by allocation rate, not by what it holds;
    # index builds run it for Anserini's buffer (python -m bench scale --gc measures both).
    index = tmp_path / "lucene"
    built = _child(index, "build")
    assert built["hits"] == 1 and "G1 Young Generation" in built["collector"]
    searched = _child(index, "search")
    assert [h[0] for h in searched["hits"]] == ["a"]
    assert searched["collector"] == ["Copy", "MarkSweepCompact"]  # the serial collector's two
    # A collector the user chose wins (the JVM would refuse to start with two).
    for variable, what in (("JAVA_TOOL_OPTIONS", "search"), ("_JAVA_OPTIONS", "search"), ("_JAVA_OPTIONS", "build")):
        chosen = _child(index, what, **{variable: "-XX:+UseParallelGC"})
        assert "PS Scavenge" in chosen["collector"] and chosen["hits"]  # the parallel collector
    # So do options that imply one; collector-like flags that do not choose one do not count.
    heap = _child(index, "search", JAVA_TOOL_OPTIONS="-XX:+AggressiveHeap")
    assert "PS Scavenge" in heap["collector"]
    other = _child(index, "search", JAVA_TOOL_OPTIONS="-XX:+UseGCOverheadLimit")
    assert other["collector"] == ["Copy", "MarkSweepCompact"]


def test_a_search_process_leaves_no_files_behind_in_the_cache(tmp_path: Path) -> None:
    """A search writes nothing to the user's cache on the JVM's behalf (no class-sharing archive)."""
    index, cache = tmp_path / "lucene", tmp_path / "cache"
    _child(index, "build")
    assert [h[0] for h in _child(index, "search", XDG_CACHE_HOME=str(cache))["hits"]] == ["a"]
    assert not cache.exists() or list(cache.rglob("*")) == []
