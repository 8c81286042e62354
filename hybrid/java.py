"""Find a Java 21+ runtime and start the JVM that Anserini (pyserini's engine) runs in.

The JVM is started through pyjnius directly with Anserini's fat jar on the classpath, not
by importing pyserini: that import pulls in many unrelated dependencies, and a
command-line search must not pay for them (docs/benchmarks.md has the figures).
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import re
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

from hybrid.errors import JavaNotFoundError

log = logging.getLogger(__name__)

MIN_JAVA = 21
JDK_GLOBS = (
    "/usr/lib/jvm/*",
    "/usr/java/*",
    "/usr/local/lib/jvm/*",
    "/opt/java/*",
    "/opt/*jdk*",
    "/Library/Java/JavaVirtualMachines/*/Contents/Home",
)

SIMPLE_LOG4J = "org.apache.logging.log4j.simple.SimpleLoggerContextFactory"

_started: dict[str, Any] = {}


def java_version(home: Path) -> int | None:
    """Major version of the JDK/JRE at ``home``, from its ``release`` file or ``java -version``."""
    release = home / "release"
    if release.is_file():
        match = re.search(r'^JAVA_VERSION="(\d+)(?:\.(\d+))?', release.read_text(errors="replace"), re.M)
        if match:
            major = int(match.group(1))
            return int(match.group(2) or 0) if major == 1 else major
    java = home / "bin" / "java"
    if not java.is_file():
        return None
    try:
        out = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=20).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)', out)
    return int(match.group(1)) if match else None


def find_java_home(hint: str | None = None, search: tuple[str, ...] = JDK_GLOBS) -> tuple[Path, int]:
    """Return ``(java home, major version)`` of a Java 21+ runtime.

    ``hint`` (the caller's JAVA_HOME) wins when it is new enough; otherwise the newest
    runtime found in the usual JVM directories.

    Raises:
        JavaNotFoundError: no Java 21+ runtime, with what to install.
    """
    if hint:
        version = java_version(Path(hint))
        if version is not None and version >= MIN_JAVA:
            return Path(hint), version
        log.info("JAVA_HOME=%s is Java %s; looking for Java %d+", hint, version, MIN_JAVA)
    found: list[tuple[int, Path]] = []
    for pattern in search:
        for candidate in glob.glob(pattern):
            home = Path(candidate)
            if home.is_symlink() or not (home / "bin" / "java").exists():
                continue
            version = java_version(home)
            if version is not None and version >= MIN_JAVA:
                found.append((version, home))
    if not found:
        raise JavaNotFoundError(
            f"the embedded backend needs Java {MIN_JAVA}+ (pyserini/Anserini) and none was found "
            f"(JAVA_HOME={hint or 'unset'}); install one, e.g. 'apt-get install openjdk-21-jdk-headless' "
            "or a Temurin 21 JDK, and set JAVA_HOME to it"
        )
    version, home = max(found)
    return home, version


def anserini_jar() -> Path:
    """Path of the Anserini fat jar bundled with pyserini, found without importing pyserini."""
    spec = importlib.util.find_spec("pyserini")
    if spec is None or not spec.submodule_search_locations:
        raise JavaNotFoundError("pyserini is not installed; run: pip install pyserini==1.6.0")
    jars = sorted(Path(next(iter(spec.submodule_search_locations)), "resources", "jars").glob("anserini-*-fatjar.jar"))
    if not jars:
        raise JavaNotFoundError("pyserini's Anserini jar is missing; reinstall pyserini")
    return jars[-1]


def start_jvm(java_hint: str | None = None, *, builds_index: bool = False) -> Any:
    """Start the JVM once per process with Anserini on the classpath; return ``jnius.autoclass``.

    The first call decides the collector. A JVM started to search (mining, serving, CLI
    searches) holds few live objects, but G1 sizes its committed heap by the allocation
    rate, not by what it holds, so it grows through a long mining run. Such a JVM runs the
    serial collector, whose heap stays put, at the same speed (``python -m bench scale
    --gc``; the figures are in docs/benchmarks.md). A JVM started to build a Lucene index
    (``builds_index``: Anserini buffers up to 2 GB of documents) runs G1. (A training
    refresh that must rebuild the BM25 index, which is rare, builds it in the searching
    JVM.) A collector named in ``JAVA_TOOL_OPTIONS`` or ``_JAVA_OPTIONS`` wins: the JVM
    refuses to start with two. If pyserini already started the JVM in this process, that JVM is reused.
    """
    if "autoclass" in _started:
        return _started["autoclass"]
    import jnius_config

    if not jnius_config.vm_running:
        home, version = find_java_home(java_hint)
        # pyjnius finds libjvm through JAVA_HOME; this process must use the 21+ runtime.
        os.environ["JAVA_HOME"] = str(home)
        quiet = resources.files("hybrid.backends.embedded")
        options = [
            # log4j-api's simple logger instead of log4j-core: core's start-up (plugin scan,
            # XML configuration, pattern layouts) was the largest part of a cold search.
            # Anserini's warnings still reach stderr; its INFO lines do not.
            f"-Dlog4j2.loggerContextFactory={SIMPLE_LOG4J}",
            "-Dorg.apache.logging.log4j.simplelog.level=WARN",
            "-Dorg.apache.logging.log4j.simplelog.logFile=system.err",
            f"-Djava.util.logging.config.file={quiet.joinpath('logging.properties')}",
            "-Xss4m",
            # Python keeps SIGINT/SIGTERM: Ctrl-C runs hybrid's cleanup and its resume message
            # instead of the JVM's handlers (which skipped them and left hs_err crash logs).
            "-Xrs",
        ]
        if not _user_collector():
            options.append("-XX:+UseG1GC" if builds_index else "-XX:+UseSerialGC")
        if version >= 22:
            options.append("--enable-native-access=ALL-UNNAMED")
        if version >= 23:
            options.append("--sun-misc-unsafe-memory-access=allow")
        jar = anserini_jar()
        jnius_config.add_options(*options)
        jnius_config.add_classpath(str(jar))
        log.debug("starting JVM from %s (Java %d)", home, version)
    from jnius import autoclass

    _started["autoclass"] = autoclass
    return autoclass


# Read by every JVM, one started through JNI too (JDK_JAVA_OPTIONS only by the launcher).
USER_OPTIONS = ("JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS")
# A collector flag, or options that may hold or imply one (the JVM refuses two collectors).
_CHOOSES_COLLECTOR = re.compile(
    r"-XX:\+Use(?:Serial|Parallel|G1|Z|Shenandoah|Epsilon)GC\b|-XX:\+AggressiveHeap\b|-XX:(?:Flags|VMOptionsFile)="
)


def _user_collector() -> bool:
    """Whether the user's JVM options may already choose a garbage collector."""
    return any(_CHOOSES_COLLECTOR.search(os.environ.get(name, "")) for name in USER_OPTIONS)
