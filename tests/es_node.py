"""Provision and run real Elasticsearch nodes (one, or a cluster of several) for tests and CI.

The official integ-test-zip comes from Maven Central (via ``mvn dependency:copy``, or a
plain download when Maven is absent), is unpacked into a cache outside the clone, and runs
as an unprivileged user on 127.0.0.1 at a free port. Usage::

    python tests/es_node.py start --version 9.2.8 --state /tmp/es9.json   # prints the URL
    python tests/es_node.py stop --state /tmp/es9.json
    python tests/es_node.py start --nodes 3 --state /tmp/cluster.json  # URLs comma-separated
    python tests/es_node.py start --secure --state /tmp/sec.json  # HTTPS, a user, a CA: see the state
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import random
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


def _port_block(count: int) -> list[int]:
    """``count`` free ports below the kernel's ephemeral range: a port picked from that range
    and released can be taken by an outgoing connection (one node dialling another) before
    the node meant to listen on it starts."""
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(100):
        start = rng.randrange(10_000, low - count)
        try:
            for port in range(start, start + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return list(range(start, start + count))
    raise RuntimeError(f"no {count} consecutive free ports below {low}")


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
    version: str,
    heap: str = "1g",
    timeout: float = 240.0,
    extra: dict[str, str] | None = None,
    secure: bool = False,
) -> dict[str, object]:
    """Start a node (``extra``: more node settings); returns its state (url, pid, version, run directory).

    With ``secure`` the node runs with security on and TLS on HTTP: a CA and a node
    certificate are made here (``cryptography``), a superuser ``hybrid-admin`` with a random
    password is added to the file realm; the state then also holds ``ca``, ``user`` and
    ``password``.
    """
    cache = cache_dir()
    home = unpack(version, cache)
    run = Path(tempfile.mkdtemp(prefix=f"hybrid-es-{version}-"))
    shutil.copytree(home / "config", run / "config")
    secrets: dict[str, str] = {}
    if secure:
        secrets = _secure(home, run, version)
    port = free_port()
    settings = {
        "discovery.type": "single-node",
        "network.host": "127.0.0.1",
        "http.port": str(port),
        "transport.port": str(free_port()),
        "xpack.security.enabled": "true" if secure else "false",
        "cluster.name": f"hybrid-test-{port}",
        **_COMMON,
        **(_tls_settings() if secure else {}),
        **(extra or {}),
    }
    pid = _launch(home, version, run, settings, heap, timeout)
    url = f"{'https' if secure else 'http'}://127.0.0.1:{port}"
    state: dict[str, object] = {"url": url, "version": version, "run": str(run), "pidfile": str(run / "es.pid")}
    state.update(secrets)
    _wait_healthy(url, run, timeout, secrets)
    state["pid"] = pid
    return state


# Settings every test node gets.
_COMMON = {
    "cluster.routing.allocation.disk.threshold_enabled": "false",
    "action.destructive_requires_name": "false",
}


def _clear_stale_attach_sockets() -> None:
    """Remove /tmp/.java_pid<N> sockets whose JVM has exited. A node attaches its entitlement
    agent to itself through /tmp/.java_pid<its pid>, and refuses to boot when a stale one
    left by another user's JVM that had the same pid is in the way (seen on a CI machine
    whose /tmp had kept them for hours)."""
    for path in Path("/tmp").glob(".java_pid*"):
        pid = path.name.removeprefix(".java_pid")
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            path.unlink(missing_ok=True)


def _launch(home: Path, version: str, run: Path, settings: dict[str, str], heap: str, timeout: float) -> int:
    """Start one node daemonized from ``run`` (its config, data and logs); returns its pid."""
    owner = _ensure_user()
    (run / "data").mkdir(exist_ok=True)
    (run / "logs").mkdir(exist_ok=True)
    if owner is not None:
        os.chmod(run, 0o755)
        for path in [run, *run.rglob("*")]:
            os.chown(path, *owner)
    _clear_stale_attach_sockets()
    pidfile = run / "es.pid"
    settings = {**settings, "path.data": str(run / "data"), "path.logs": str(run / "logs")}
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
    return int(pidfile.read_text().strip())


def start_cluster(version: str, nodes: int = 3, heap: str = "512m", timeout: float = 300.0) -> dict[str, object]:
    """Start ``nodes`` nodes on loopback forming one cluster (each master-eligible, holding
    data); returns its state: ``url`` (every node's, comma-separated, as ``--es-url`` takes
    them), ``urls``, ``version`` and per-node ``nodes`` (url, pid, run directory)."""
    home = unpack(version, cache_dir())
    ports = _port_block(2 * nodes)
    http, transport = ports[:nodes], ports[nodes:]
    names = [f"node-{i}" for i in range(nodes)]
    members: list[dict[str, object]] = []
    try:
        for i in range(nodes):
            run = Path(tempfile.mkdtemp(prefix=f"hybrid-es-{version}-{names[i]}-"))
            shutil.copytree(home / "config", run / "config")
            settings = {
                "node.name": names[i],
                "network.host": "127.0.0.1",
                "http.port": str(http[i]),
                "transport.port": str(transport[i]),
                "discovery.seed_hosts": ",".join(f"127.0.0.1:{p}" for p in transport),
                "cluster.initial_master_nodes": ",".join(names),
                "xpack.security.enabled": "false",
                "cluster.name": f"hybrid-cluster-{http[0]}",
                **_COMMON,
            }
            url = f"http://127.0.0.1:{http[i]}"
            member: dict[str, object] = {"url": url, "run": str(run), "pidfile": str(run / "es.pid")}
            member.update(name=names[i], settings=settings, heap=heap)
            members.append(member)
            member["pid"] = _launch(home, version, run, settings, heap, timeout)
        _wait_healthy(str(members[0]["url"]), Path(str(members[0]["run"])), timeout, nodes=nodes)
    except BaseException:
        for member in members:
            if "pid" in member:
                stop(member)
        raise
    urls = [str(m["url"]) for m in members]
    return {"url": ",".join(urls), "urls": urls, "version": version, "nodes": members}


def kill_node(state: dict[str, object], index: int) -> None:
    """SIGKILL one node of a cluster started by :func:`start_cluster` (its data stays)."""
    member = state["nodes"][index]  # type: ignore[index]
    with contextlib.suppress(ProcessLookupError):
        os.kill(int(member["pid"]), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(int(member["pid"]), 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def restart_node(state: dict[str, object], index: int, timeout: float = 300.0) -> None:
    """Start a killed node again on its data; returns once the cluster is green with all nodes."""
    member = state["nodes"][index]  # type: ignore[index]
    run = Path(member["run"])
    (run / "es.pid").unlink(missing_ok=True)
    version = str(state["version"])
    member["pid"] = _launch(unpack(version, cache_dir()), version, run, member["settings"], member["heap"], timeout)
    _wait_healthy(str(member["url"]), run, timeout, nodes=len(state["nodes"]))  # type: ignore[arg-type]


def _wait_healthy(url: str, run: Path, timeout: float, secrets: dict[str, str] | None = None, nodes: int = 1) -> None:
    import base64
    import ssl

    deadline = time.monotonic() + timeout
    last = ""
    wanted = "yellow" if nodes == 1 else "green"
    request = urllib.request.Request(
        f"{url}/_cluster/health?wait_for_status={wanted}&wait_for_nodes={nodes}&timeout=5s"
    )
    context = None
    if secrets:
        token = base64.b64encode(f"{secrets['user']}:{secrets['password']}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        context = ssl.create_default_context(cafile=secrets["ca"])
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=10, context=context) as r:
                if json.load(r).get("status") in ("yellow", "green"):
                    return
        except OSError as exc:
            last = str(exc)
        time.sleep(1)
    logs = sorted((run / "logs").glob("*.log"))
    tail = logs[-1].read_text()[-4000:] if logs else ""
    raise RuntimeError(f"Elasticsearch at {url} not healthy after {timeout:.0f}s ({last})\n{tail}")


def _tls_settings() -> dict[str, str]:
    return {
        "xpack.security.http.ssl.enabled": "true",
        "xpack.security.http.ssl.key": "certs/node.key",
        "xpack.security.http.ssl.certificate": "certs/node.crt",
        "xpack.security.http.ssl.certificate_authorities": "certs/ca.crt",
        "xpack.security.transport.ssl.enabled": "false",
        "xpack.security.authc.api_key.enabled": "true",
    }


def make_certs(target: Path, days: int = 30) -> None:
    """A CA (``ca.crt``) and a certificate for 127.0.0.1/localhost signed by it (``node.crt/.key``)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    target.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def cert(
        subject: str, key: rsa.RSAPrivateKey, issuer: x509.Name, signer: rsa.RSAPrivateKey, ca: bool
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hybrid test CA")])
    ca_cert = cert("hybrid test CA", ca_key, ca_name, ca_key, ca=True)
    node_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    node_cert = cert("localhost", node_key, ca_name, ca_key, ca=False)
    pem = serialization.Encoding.PEM
    (target / "ca.crt").write_bytes(ca_cert.public_bytes(pem))
    (target / "node.crt").write_bytes(node_cert.public_bytes(pem))
    (target / "node.key").write_bytes(
        node_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def _secure(home: Path, run: Path, version: str) -> dict[str, str]:
    """Certificates and a file-realm superuser for a secured node; returns ca, user, password."""
    import secrets as random_secrets

    make_certs(run / "config" / "certs")
    password = random_secrets.token_urlsafe(18)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "ES_JAVA_HOME": java_home(version),
        "ES_PATH_CONF": str(run / "config"),
    }
    users = [str(home / "bin" / "elasticsearch-users"), "useradd", "hybrid-admin", "-p", password, "-r", "superuser"]
    done = subprocess.run(users, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"elasticsearch-users failed: {done.stdout}{done.stderr}")
    return {"ca": str(run / "config" / "certs" / "ca.crt"), "user": "hybrid-admin", "password": password}


def add_user(state: dict[str, object], user: str, password: str, role: str, definition: dict[str, object]) -> None:
    """A file-realm user with one file-based role (a secured node only); waits until it can log in.

    File realm and file roles need no ``.security`` index, which the integ-test zip cannot
    create (it lacks the analysis-common module), so API keys are not available there.
    """
    import base64
    import ssl

    run = Path(str(state["run"]))
    version = str(state["version"])
    roles = run / "config" / "roles.yml"
    with roles.open("a") as fh:
        fh.write(f"\n{role}: {json.dumps(definition)}\n")  # JSON is YAML
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "ES_JAVA_HOME": java_home(version),
        "ES_PATH_CONF": str(run / "config"),
    }
    home = unpack(version, cache_dir())
    cmd = [str(home / "bin" / "elasticsearch-users"), "useradd", user, "-p", password, "-r", role]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"elasticsearch-users failed: {done.stdout}{done.stderr}")
    owner = _ensure_user()
    if owner is not None:
        for path in (run / "config").glob("*"):
            os.chown(path, *owner)
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(f"{state['url']}/_security/_authenticate")
    request.add_header("Authorization", f"Basic {token}")
    context = ssl.create_default_context(cafile=str(state["ca"]))
    deadline = time.monotonic() + 60
    while True:  # the node reloads users and roles files every few seconds
        try:
            with urllib.request.urlopen(request, timeout=10, context=context) as r:
                if role in json.load(r).get("roles", []):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"user {user} could not log in to {state['url']}")
        time.sleep(1)


def stop(state: dict[str, object], timeout: float = 60.0) -> None:
    """Stop the node (every node of a cluster) by its pid and remove its run directory."""
    if "nodes" in state:
        for member in state["nodes"]:  # type: ignore[attr-defined]
            stop(member, timeout)
        return
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
    parser.add_argument("--nodes", type=int, default=1, help="more than 1: a cluster on loopback")
    parser.add_argument("--state", type=Path, help="JSON file holding the running node's state")
    parser.add_argument(
        "--secure", action="store_true", help="security and TLS on; the state file (0600) holds the password"
    )
    args = parser.parse_args()
    if args.action == "fetch":
        print(unpack(args.version, cache_dir()))
        return 0
    if args.state is None:
        parser.error("--state is required")
    if args.action == "start":
        if args.secure and args.nodes != 1:
            parser.error("--secure starts one node; leave out --nodes")
        one = args.nodes == 1
        state = start(args.version, secure=args.secure) if one else start_cluster(args.version, args.nodes)
        # the state may hold the node's password: readable by its owner only
        fd = os.open(args.state, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(state, out)
        print(state["url"])
        if args.secure:
            print(f"user {state['user']}, CA {state['ca']}, password under 'password' in {args.state}")
        return 0
    stop(json.loads(args.state.read_text()))
    args.state.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
