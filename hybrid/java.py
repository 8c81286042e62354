"""Find a Java 21+ runtime and start the JVM that Anserini (pyserini's engine) runs in.

The JVM is started through pyjnius directly with Anserini's fat jar on the classpath, not
by importing pyserini: that import costs ~12 s of unrelated dependencies, and a
command-line search must not pay it.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import hashlib
import importlib.util
import logging
import os
import re
import shlex
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
    searches) holds a few MiB of live objects (8 MiB after a full GC, measured while mining),
    but G1 sizes its committed heap by the allocation rate: 808 MiB by the end of a
    500k-query mining run. Such a JVM runs the serial collector, whose committed heap stayed
    at 365 MiB, at the same speed (``bench/scale.py --gc``: half the peak memory). A JVM
    started to build a Lucene index (``builds_index``: Anserini buffers up to 2 GB of
    documents) runs G1. (A training refresh that must rebuild the BM25 index, which is rare,
    builds it in the searching JVM.) A collector named in ``JAVA_TOOL_OPTIONS`` or
    ``_JAVA_OPTIONS`` wins: the JVM refuses to start with two.
    If pyserini already started the JVM in this process, that JVM is reused.
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
            # XML configuration, pattern layouts) was 0.4 s of a cold search's 1.5 s.
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
        jnius_config.add_options(*options, *_class_sharing(home, version, jar, options))
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


# Class-data sharing: the ~2,500 classes a search loads (Lucene, Anserini) are parsed and
# verified once into an archive that later JVMs map, which takes ~0.25 s off every cold
# search. A JVM started through JNI cannot write an archive itself, so the first process
# records the classes it loads and, once it has exited, a detached ``java -Xshare:dump``
# builds the archive (about 2 s, in the background). Set HYBRID_JVM_CDS=0 to turn it off.
_cds: dict[str, Any] = {}


def cds_dir() -> Path:
    """Where class-sharing archives live (``$XDG_CACHE_HOME/hybrid/jvm``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hybrid" / "jvm"


def cds_archive_offered() -> Path | None:
    """The class-sharing archive this process's JVM was started with, if any."""
    archive = _cds.get("archive")
    return archive if isinstance(archive, Path) else None


def cds_busy() -> bool:
    """Whether some process is recording classes or building an archive now."""
    import fcntl

    for lock in cds_dir().glob("*.lock"):
        try:
            fd = os.open(lock, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)
    return False


def searched() -> None:
    """Mark that this process ran a Lucene search: its class list is worth archiving."""
    _cds["searched"] = True


def _class_sharing(home: Path, version: int, jar: Path, options: list[str]) -> list[str]:
    """JVM options that use this setup's archive, or record the classes to build one.

    One process at a time records (an flock held by it, then by the dump that follows it);
    the archive's key covers the runtime's exact build, the jar and the options, so an
    updated JDK or pyserini makes a new one.
    """
    import fcntl

    if os.environ.get("HYBRID_JVM_CDS", "1") == "0":
        return []
    try:
        root = cds_dir()
        runtime = [(home / name).stat() for name in ("release", "lib/server/libjvm.so") if (home / name).exists()]
        stamps = [f"{st.st_size}:{st.st_mtime_ns}" for st in (*runtime, jar.stat())]
    except (OSError, RuntimeError):  # no home directory, or files gone: run without an archive
        return []
    user = [os.environ.get(name, "") for name in USER_OPTIONS]  # the dump's launcher reads them too
    parts = [str(home), str(version), str(jar), *stamps, *options, *user]
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    archive, lock, failed = root / f"{key}.jsa", root / f"{key}.lock", root / f"{key}.failed"
    if failed.exists():
        return []  # this runtime could not build one; do not try on every start
    if archive.is_file():
        _cds["archive"] = archive
        with contextlib.suppress(OSError):
            os.utime(archive)  # recently used: kept by prune_archives
        # A stale or foreign archive is ignored by the JVM (it falls back to loading classes);
        # its notices would otherwise land on stdout.
        return [f"-XX:SharedArchiveFile={archive}", "-Xshare:auto", "-Xlog:disable"]
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
    except OSError:
        return []  # the cache is not writable
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return []  # another process is recording or building this archive
    if archive.is_file():  # built while we waited for the lock
        os.close(fd)
        return []
    # Left by a process killed while recording, or by a dump killed with its shell (this
    # lock is free, so neither is running).
    for stale in [*root.glob(f"{key}.*.classlist"), *root.glob(f"{key}.*.jsa.tmp")]:
        stale.unlink(missing_ok=True)
    prune_archives(root)
    classes = root / f"{key}.{os.getpid()}.classlist"
    tmp = root / f"{key}.{os.getpid()}.jsa.tmp"
    dump = [str(home / "bin" / "java"), *options, "-Xshare:dump", f"-XX:SharedClassListFile={classes}"]
    dump += [f"-XX:SharedArchiveFile={tmp}", "-cp", str(jar)]
    _cds["lock_fd"] = fd
    atexit.register(_dump_archive, dump, classes, tmp, archive, failed, fd)
    return [f"-XX:DumpLoadedClassList={classes}"]


KEEP_ARCHIVES = 4


def prune_archives(root: Path, keep: int = KEEP_ARCHIVES) -> None:
    """Delete all but the ``keep`` most recently used archives (20-35 MB each).

    Every new JDK, pyserini or install path makes a new archive; nothing else removes the
    old ones. A JVM that maps a deleted archive keeps its pages."""
    archives = []
    for path in root.glob("*.jsa"):
        with contextlib.suppress(OSError):
            archives.append((path.stat().st_mtime, path))
    for _, path in sorted(archives, reverse=True)[keep:]:
        with contextlib.suppress(OSError):
            path.unlink()


def _dump_archive(dump: list[str], classes: Path, tmp: Path, archive: Path, failed: Path, fd: int) -> None:
    """At exit: build the archive from this process's class list once it has exited.

    The shell that waits and dumps inherits the lock, so no other process records meanwhile;
    it is released when the shell ends."""
    if not _cds.get("searched"):
        classes.unlink(missing_ok=True)
        return
    q = shlex.quote
    # The JVM flushes the class list when this process ends: wait for it, then dump. A dump
    # killed from outside (SIGHUP, SIGINT, SIGKILL, SIGTERM) is not this runtime failing: the
    # next search records again. Any other status, a JVM crash (SIGABRT, SIGSEGV) included, is.
    script = (
        f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 0.1; done; "
        f"nice -n 10 {shlex.join(dump)} >/dev/null 2>&1; "
        f"case $? in 0) mv -f {q(str(tmp))} {q(str(archive))} ;; 129|130|137|143) ;; "
        f"*) touch {q(str(failed))} ;; esac; "
        f"rm -f {q(str(classes))} {q(str(tmp))}"
    )
    try:
        child = subprocess.Popen(
            ["/bin/sh", "-c", script],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(fd,),
            # the launcher alone reads it: the archive must match the JVM that recorded
            env={k: v for k, v in os.environ.items() if k != "JDK_JAVA_OPTIONS"},
        )
        child.returncode = 0  # detached on purpose: never waited for (no ResourceWarning)
    except OSError:
        classes.unlink(missing_ok=True)
