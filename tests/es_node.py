"""Provision and run a real single-node Elasticsearch for tests and CI.

The official integ-test-zip comes from Maven Central (via ``mvn dependency:copy``, or a
plain download when Maven is absent), is unpacked into a cache outside the clone, and runs
as an unprivileged user on 127.0.0.1 at a free port. Usage::

    python tests/es_node.py start --version 9.2.8 --state /tmp/es9.json   # prints the URL
    python tests/es_node.py stop --state /tmp/es9.json
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

ES9 = "9.2.8"  # newest 9.x integ-test-zip on Maven Central when pinned
ES8 = "8.19.21"  # newest 8.19.x
GROUP = "org.elasticsearch.distribution.integ-test-zip"
CENTRAL = "https://repo.maven.apache.org/maven2"
ES_USER = "hybrid-es"


def cache_dir() -> Path:
    """Outside any clone; readable by the unprivileged ES user when we are root."""
    if env := os.environ.get("HYBRID_ES_CACHE"):
        return Path(env)
    return Path("/var/cache/hybrid-es") if os.geteuid() == 0 else Path.home() / ".cache" / "hybrid-es"


def fetch_zip(version: str, cache: Path) -> Path:
    """The integ-test-zip for ``version`` in ``cache``, fetched once."""
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"elasticsearch-{version}.zip"
    if target.is_file() and zipfile.is_zipfile(target):
        return target
    if shutil.which("mvn"):
        subprocess.run(
            [
                "mvn",
                "-q",
                "-B",
                "-Dstyle.color=never",
                "dependency:copy",
                f"-Dartifact={GROUP}:elasticsearch:{version}:zip",
                f"-DoutputDirectory={cache}",
            ],
            check=True,
            cwd=cache,
            stdout=sys.stderr,
        )
    else:
        url = f"{CENTRAL}/{GROUP.replace('.', '/')}/elasticsearch/{version}/elasticsearch-{version}.zip"
        tmp = target.with_suffix(".part")
        urllib.request.urlretrieve(url, tmp)
        tmp.replace(target)
    return target


def unpack(version: str, cache: Path) -> Path:
    """Unpacked ES home for ``version`` (``cache/elasticsearch-<version>``)."""
    home = cache / f"elasticsearch-{version}"
    if (home / "bin" / "elasticsearch").is_file():
        return home
    archive = fetch_zip(version, cache)
    staging = Path(tempfile.mkdtemp(dir=cache))
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(staging)
    for path in staging.rglob("*"):  # zipfile drops modes: restore exec bits for scripts
        if path.is_file() and (path.parent.name == "bin" or path.suffix == ".sh"):
            path.chmod(0o755)
    (staging / f"elasticsearch-{version}").rename(home)
    shutil.rmtree(staging, ignore_errors=True)
    return home


def java_home(version: str) -> str:
    """ES 9 needs Java 21+; 8.19 runs on 17 or 21+ too. Prefer the newest available."""
    if env := os.environ.get("ES_JAVA_HOME"):
        return env
    from hybrid.java import find_java_home

    home, _ = find_java_home(None)
    return str(home)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ensure_user() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None  # ES refuses root only; an ordinary user runs it directly
    try:
        entry = pwd.getpwnam(ES_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", ES_USER], check=True)
        entry = pwd.getpwnam(ES_USER)
    return entry.pw_uid, entry.pw_gid


def start(
    version: str, heap: str = "1g", timeout: float = 240.0, extra: dict[str, str] | None = None
) -> dict[str, object]:
    """Start a node (``extra``: more node settings); returns its state (url, pid, version, run directory)."""
    cache = cache_dir()
    home = unpack(version, cache)
    run = Path(tempfile.mkdtemp(prefix=f"hybrid-es-{version}-"))
    shutil.copytree(home / "config", run / "config")
    (run / "data").mkdir()
    (run / "logs").mkdir()
    owner = _ensure_user()
    if owner is not None:
        os.chmod(run, 0o755)
        for path in [run, *run.rglob("*")]:
            os.chown(path, *owner)
    port = free_port()
    pidfile = run / "es.pid"
    settings = {
        "discovery.type": "single-node",
        "network.host": "127.0.0.1",
        "http.port": str(port),
        "transport.port": str(free_port()),
        "xpack.security.enabled": "false",
        "cluster.routing.allocation.disk.threshold_enabled": "false",
        "path.data": str(run / "data"),
        "path.logs": str(run / "logs"),
        "cluster.name": f"hybrid-test-{port}",
        "action.destructive_requires_name": "false",
        **(extra or {}),
    }
    cmd = [str(home / "bin" / "elasticsearch"), "-d", "-p", str(pidfile)]
    cmd += [f"-E{k}={v}" for k, v in settings.items()]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "ES_JAVA_HOME": java_home(version),
        "ES_PATH_CONF": str(run / "config"),
        "ES_JAVA_OPTS": f"-Xms{heap} -Xmx{heap}",
        "HOME": str(run),
    }
    if owner is not None:
        cmd = ["runuser", "-u", ES_USER, "--", *cmd]
    out = run / "start.log"
    with out.open("w") as fh:
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"Elasticsearch {version} failed to start:\n{out.read_text()[-4000:]}")
    url = f"http://127.0.0.1:{port}"
    state: dict[str, object] = {"url": url, "version": version, "run": str(run), "pidfile": str(pidfile)}
    _wait_healthy(url, run, timeout)
    state["pid"] = int(pidfile.read_text().strip())
    return state


def _wait_healthy(url: str, run: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_cluster/health?wait_for_status=yellow&timeout=5s", timeout=10) as r:
                if json.load(r).get("status") in ("yellow", "green"):
                    return
        except OSError as exc:
            last = str(exc)
        time.sleep(1)
    logs = sorted((run / "logs").glob("*.log"))
    tail = logs[-1].read_text()[-4000:] if logs else ""
    raise RuntimeError(f"Elasticsearch at {url} not healthy after {timeout:.0f}s ({last})\n{tail}")


def stop(state: dict[str, object], timeout: float = 60.0) -> None:
    """Stop the node by its pid and remove its run directory."""
    pid = int(str(state.get("pid") or Path(str(state["pidfile"])).read_text().strip()))
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.5)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    shutil.rmtree(str(state["run"]), ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("start", "stop", "fetch"))
    parser.add_argument("--version", default=ES9)
    parser.add_argument("--state", type=Path, help="JSON file holding the running node's state")
    args = parser.parse_args()
    if args.action == "fetch":
        print(unpack(args.version, cache_dir()))
        return 0
    if args.state is None:
        parser.error("--state is required")
    if args.action == "start":
        state = start(args.version)
        args.state.write_text(json.dumps(state))
        print(state["url"])
        return 0
    stop(json.loads(args.state.read_text()))
    args.state.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
