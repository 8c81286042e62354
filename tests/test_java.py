from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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


SEARCH_CHILD = """
import json, sys
from pathlib import Path
from typing import Any
from hybrid.backends.embedded.lucene import LuceneSearcher
from hybrid.config import LexicalSettings
from hybrid.java import cds_archive_offered, start_jvm
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
archive = cds_archive_offered()
# offered, and mapped by the JVM (a rejected archive would not be)
mapped = archive is not None and str(archive) in Path("/proc/self/maps").read_text()
if len(sys.argv) > 3:
    from jnius import autoclass
    beans = autoclass("java.lang.management.ManagementFactory").getGarbageCollectorMXBeans()
    print(json.dumps({"hits": hits, "collector": [beans.get(i).getName() for i in range(beans.size())]}))
else:
    print(json.dumps({"hits": hits, "archive": mapped}))
"""


def _child(index: Path, what: str, cache: Path, *extra: str, **env: str) -> dict[str, Any]:
    import json
    import os
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", SEARCH_CHILD, str(index), what, *extra],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "XDG_CACHE_HOME": str(cache), "HYBRID_JVM_CDS": "1", **env},
    )
    assert done.returncode == 0, done.stderr
    # the JVM's class-sharing notices never reach the user (only its line naming the user's options)
    assert [line for line in done.stderr.splitlines() if not line.startswith("Picked up ")] == []
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_class_sharing_archive_is_built_after_a_search_and_used_by_the_next(tmp_path: Path) -> None:
    import time

    from hybrid.backends.embedded.lucene import build_lucene
    from hybrid.config import LexicalSettings
    from hybrid.types import Document

    docs = [
        Document("a", "cholesterol and heart disease"),
        Document("b", "a heart of gold"),
        Document("c", "river boats"),
    ]
    index = tmp_path / "lucene"
    build_lucene(index, [docs], LexicalSettings(), None)
    cache = tmp_path / "cache"
    jvm = cache / "hybrid" / "jvm"

    # Off: nothing recorded.
    assert _child(index, "search", cache, HYBRID_JVM_CDS="0")["archive"] is False
    assert not jvm.exists() or not any(jvm.iterdir())
    # A process that never searched leaves no class list (only its lock file): its classes
    # are not a search's.
    assert _child(index, "start", cache)["archive"] is False
    assert [p.suffix for p in jvm.iterdir()] == [".lock"]
    # What a process and its dump left when killed while recording this archive
    key = next(jvm.iterdir()).stem
    for leftover in (f"{key}.4242.classlist", f"{key}.4242.jsa.tmp"):
        (jvm / leftover).write_bytes(b"partial")

    # JDK_JAVA_OPTIONS is read by the dump's launcher only: a collector there must not fail it
    first = _child(index, "search", cache, JDK_JAVA_OPTIONS="-XX:+UseParallelGC")
    assert first["archive"] is False and [h[0] for h in first["hits"]] == ["a", "b"]
    deadline = time.monotonic() + 90
    while not list(jvm.glob("*.jsa")) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(list(jvm.glob("*.jsa"))) == 1, sorted(p.name for p in jvm.iterdir())
    assert not list(jvm.glob("*.classlist")) and not list(jvm.glob("*.tmp")) and not list(jvm.glob("*.failed"))
    archive = next(jvm.glob("*.jsa"))
    os.utime(archive, (0, 0))
    second = _child(index, "search", cache)
    assert second == {"hits": first["hits"], "archive": True}
    assert archive.stat().st_mtime > 0  # marked as used: prune_archives keeps the recent ones


DUMP_CHILD = """
import os, sys
from pathlib import Path
from hybrid import java
root = Path(sys.argv[1])
names = [root / f"key.{n}" for n in ("classlist", "jsa.tmp", "jsa", "failed", "lock")]
names[0].write_text("classes")
fd = os.open(names[4], os.O_CREAT | os.O_RDWR)
import fcntl
fcntl.flock(fd, fcntl.LOCK_EX)
java._cds["searched"] = True
java._dump_archive(["/bin/sh", "-c", sys.argv[2]], *names[:4], fd)
"""


@pytest.mark.parametrize(
    ("dump", "left"),
    [
        ("echo built > key.jsa.tmp", ["key.jsa", "key.lock"]),
        ("exit 1", ["key.failed", "key.lock"]),  # this runtime cannot build one: not tried again
        ("kill -9 $$", ["key.lock"]),  # killed (the machine's OOM killer, a user): the next search records again
        ("kill -ABRT $$", ["key.failed", "key.lock"]),  # how a JVM crashes: a failure of this runtime
    ],
)
def test_the_background_dump_leaves_an_archive_a_failure_mark_or_nothing(
    tmp_path: Path, dump: str, left: list[str]
) -> None:
    import fcntl
    import subprocess
    import sys
    import time

    subprocess.run([sys.executable, "-c", DUMP_CHILD, str(tmp_path), f"cd {tmp_path} && {dump}"], check=True)
    deadline = time.monotonic() + 30
    with (tmp_path / "key.lock").open() as lock:
        while True:  # the dump's shell holds the lock until it ends
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                assert time.monotonic() < deadline, "the dump did not end"
                time.sleep(0.1)
    assert sorted(p.name for p in tmp_path.iterdir()) == left


def test_only_the_most_recently_used_archives_are_kept(tmp_path: Path) -> None:
    from hybrid.java import prune_archives

    for age in range(6):
        archive = tmp_path / f"key{age}.jsa"
        archive.write_bytes(b"x")
        os.utime(archive, (1000 - age, 1000 - age))
    (tmp_path / "key0.lock").touch()
    prune_archives(tmp_path, keep=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key0.jsa", "key0.lock", "key1.jsa", "key2.jsa", "key3.jsa"]


def test_a_jvm_started_to_search_runs_the_serial_collector_and_one_started_to_index_g1(tmp_path: Path) -> None:
    # G1 sized a searching JVM's committed heap by allocation rate (up to 808 MiB for 8 MiB
    # live); index builds run it for Anserini's 2 GB buffer (bench/scale.py --gc measures both).
    index, cache = tmp_path / "lucene", tmp_path / "cache"
    built = _child(index, "build", cache, "collector", HYBRID_JVM_CDS="0")
    assert built["hits"] == 1 and "G1 Young Generation" in built["collector"]
    searched = _child(index, "search", cache, "collector", HYBRID_JVM_CDS="0")
    assert [h[0] for h in searched["hits"]] == ["a"]
    assert searched["collector"] == ["Copy", "MarkSweepCompact"]  # the serial collector's two
    # A collector the user chose wins (the JVM would refuse to start with two).
    for variable, what in (("JAVA_TOOL_OPTIONS", "search"), ("_JAVA_OPTIONS", "search"), ("_JAVA_OPTIONS", "build")):
        chosen = _child(index, what, cache, "collector", HYBRID_JVM_CDS="0", **{variable: "-XX:+UseParallelGC"})
        assert "PS Scavenge" in chosen["collector"] and chosen["hits"]  # the parallel collector
    # So do options that imply one; collector-like flags that do not choose one do not count.
    heap = _child(index, "search", cache, "collector", HYBRID_JVM_CDS="0", JAVA_TOOL_OPTIONS="-XX:+AggressiveHeap")
    assert "PS Scavenge" in heap["collector"]
    other = _child(index, "search", cache, "collector", HYBRID_JVM_CDS="0", JAVA_TOOL_OPTIONS="-XX:+UseGCOverheadLimit")
    assert other["collector"] == ["Copy", "MarkSweepCompact"]
