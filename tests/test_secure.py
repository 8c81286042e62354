"""A secured node (security on, TLS on HTTP with a CA made by the test, file-realm users with
file-based roles): hybrid works over HTTPS with only the privileges docs/operations.md lists, and
bad credentials or certificates are one line that says what to fix. No secret is ever
written anywhere.

API keys cannot be created on this node: the integ-test zip lacks the analysis-common
module that the ``.security`` index needs. A wrong key is still tested (401); a valid or
expired key is not."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import es_node
from tests.conftest import es_running

pytestmark = pytest.mark.es


@pytest.fixture(scope="module")
def secure() -> Iterator[dict[str, Any]]:
    yield from es_running("a secured Elasticsearch", lambda: es_node.start(es_node.ES9, heap="512m", secure=True))


_users = iter(range(10**6))


def make_user(secure: dict[str, Any], role: dict[str, Any]) -> tuple[str, str]:
    """A new file-realm user holding ``role``; returns (user, password)."""
    n = next(_users)
    user, password = f"hybrid-user-{n}", f"pw-{time.monotonic_ns()}-{n}"
    es_node.add_user(secure, user, password, f"hybrid_role_{n}", role)
    return user, password


def least_privilege(name: str, without: str | None = None) -> dict[str, Any]:
    """The role docs/operations.md documents for index NAME (optionally missing one privilege)."""
    own = [p for p in ("manage", "read", "write") if p != without]
    locks = [p for p in ("create_index", "read", "write") if p != without]
    return {
        "cluster": [],
        "indices": [
            {"names": [name, f"{name}-v*"], "privileges": own},
            {"names": ["hybrid-locks"], "privileges": locks},
        ],
    }


def _cli(args: list[str], tmp: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hybrid.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp,
        env={**os.environ, **(env or {})},
    )


def _key_file(tmp: Path, key: str, name: str = "key") -> Path:
    path = tmp / name
    path.write_text(key + "\n")
    return path


def test_https_with_a_password_and_nothing_leaks(
    secure: dict[str, Any], tiny_model: Path, beir_small: Path, tmp_path: Path
) -> None:
    password_file = _key_file(tmp_path, secure["password"], "password")
    tls = ["--es-url", secure["url"], "--es-ca-certs", secure["ca"]]
    as_user = [*tls, "--es-user", secure["user"], "--es-password-file", str(password_file)]
    env_user = [*tls, "--es-user", secure["user"]]  # the password from HYBRID_ES_PASSWORD
    labelled = ["--queries", str(beir_small / "queries.jsonl"), "--qrels", str(beir_small / "qrels/test.tsv")]
    small = ["--steps", "1", "--batch-size", "2", "--negatives", "1", "--pool-depth", "5"]
    runs = [
        ["index", str(beir_small), "-i", "sec", "-m", str(tiny_model), "-q", *as_user],
        ["search", "ocean tides", "-i", "sec", "--json", *env_user],
        ["info", "-i", "sec", "--json", *as_user],
        ["eval", "-i", "sec", *labelled, *as_user],
        ["train", "-i", "sec", *labelled, "--out", str(tmp_path / "run"), *small, "-q", *as_user],
    ]
    outputs = []
    for n, args in enumerate(runs):
        done = _cli(args, tmp_path, {"HYBRID_ES_PASSWORD": secure["password"]} if n == 1 else None)
        assert done.returncode == 0, (args[0], done.stderr)
        outputs.append(done.stdout + done.stderr)
    hits = [json.loads(line) for line in outputs[1].splitlines() if line.startswith("{")]
    assert hits and hits[0]["id"]
    assert json.loads(outputs[2][outputs[2].index("{") :])["recipe"]["model_hash"]
    assert "refresh" in outputs[4]  # the training run re-embedded the secured index

    secret = secure["password"]
    assert not any(secret in text for text in outputs), "a secret reached the output"
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p != password_file]
    leaked = [p for p in written if secret.encode() in p.read_bytes()]
    assert leaked == [], "a secret was written"


def test_bad_credentials_and_certificates_are_one_line(secure: dict[str, Any], tmp_path: Path) -> None:
    other_ca = tmp_path / "other"
    es_node.make_certs(other_ca)
    password = str(_key_file(tmp_path, secure["password"], "password"))
    wrong = str(_key_file(tmp_path, "not-the-password", "wrong"))
    bad_key = str(_key_file(tmp_path, "bm9wZTpub3Bl", "key"))
    user = ["--es-user", secure["user"]]
    base = ["info", "-i", "sec", "--es-url", secure["url"]]
    cases = [
        (
            [*base, "--es-ca-certs", str(other_ca / "ca.crt"), *user, "--es-password-file", password],
            "could not be verified; pass the CA that signed it with --es-ca-certs",
        ),
        ([*base, *user, "--es-password-file", password], "could not be verified"),  # no CA given at all
        (
            [*base, "--es-ca-certs", secure["ca"], *user, "--es-password-file", wrong],
            "refused the credentials (wrong, expired or revoked)",
        ),
        ([*base, "--es-ca-certs", secure["ca"], "--es-api-key-file", bad_key], "refused the credentials"),
        (  # plain HTTP to a TLS node, which closes the connection without a word
            [
                "info",
                "-i",
                "sec",
                "--es-url",
                secure["url"].replace("https://", "http://"),
                *user,
                "--es-password-file",
                password,
            ],
            "closed the connection without answering: it may still be starting, or it serves HTTPS (then use https://",
        ),
    ]
    for args, message in cases:
        done = _cli(args, tmp_path)
        assert done.returncode == 1, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in done.stderr, done.stderr

    insecure = _cli([*base, "--no-es-verify-certs", *user, "--es-password-file", password], tmp_path)
    assert "WARNING: --no-es-verify-certs" in insecure.stderr
    assert insecure.returncode == 0 and "sec" in insecure.stdout  # connected, unverified


def test_least_privilege_works_and_a_missing_privilege_is_named(
    secure: dict[str, Any], tiny_model: Path, beir_small: Path, tmp_path: Path
) -> None:
    tls = ["--es-url", secure["url"], "--es-ca-certs", secure["ca"]]
    user, password = make_user(secure, least_privilege("scoped"))
    scoped = [*tls, "--es-user", user, "--es-password-file", str(_key_file(tmp_path, password, "scoped"))]
    index = ["index", str(beir_small), "-i", "scoped", "-m", str(tiny_model), "-q", "--json"]
    done = _cli([*index, *scoped], tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["count"] == 12
    rebuilt = _cli([*index, "--recreate", *scoped], tmp_path)
    assert rebuilt.returncode == 0, rebuilt.stderr  # a new version, the alias swapped, the old one deleted
    searched = _cli(["search", "ocean tides", "-i", "scoped", *scoped], tmp_path)
    assert searched.returncode == 0, searched.stderr
    info = _cli(["info", "-i", "scoped", "--json", *scoped], tmp_path)
    assert info.returncode == 0 and "needs the cluster 'monitor' privilege" in info.stdout, info.stderr

    user, password = make_user(secure, least_privilege("nowrite", without="write"))
    no_write = [*tls, "--es-user", user, "--es-password-file", str(_key_file(tmp_path, password, "nowrite"))]
    failed = _cli(["index", str(beir_small), "-i", "nowrite", "-m", str(tiny_model), "-q", *no_write], tmp_path)
    assert failed.returncode == 1
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and "lacks a privilege" in lines[0] and "write" in lines[0], failed.stderr


def test_serve_reads_secrets_from_files_in_one_process_and_in_workers(
    secure: dict[str, Any], tiny_model: Path, beir_small: Path, tmp_path: Path
) -> None:
    """``hybrid serve`` takes --es-password-file (and HYBRID_ES_PASSWORD_FILE,
    --es-api-key-file) like every other command, with one process and with --workers."""
    from tests.test_serve import _free_port, wait_until_up

    password_file = str(_key_file(tmp_path, secure["password"], "password"))
    tls = ["--es-url", secure["url"], "--es-ca-certs", secure["ca"], "--es-user", secure["user"]]
    built = _cli(
        [
            "index",
            str(beir_small),
            "-i",
            "served",
            "-m",
            str(tiny_model),
            "-q",
            *tls,
            "--es-password-file",
            password_file,
        ],
        tmp_path,
    )
    assert built.returncode == 0, built.stderr
    for extra, env in (
        (["--es-password-file", password_file], {}),
        (["--workers", "2"], {"HYBRID_ES_PASSWORD_FILE": password_file}),
    ):
        port = _free_port()
        args = [sys.executable, "-m", "hybrid.cli", "serve", "-i", "served", "--port", str(port), *tls, *extra]
        proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path, env={**os.environ, **env}
        )
        try:
            url = wait_until_up(proc, port, "/readyz")
            answer = httpx.post(f"{url}/search", json={"query": "ocean tides", "k": 2}, timeout=60)
            assert answer.status_code == 200 and len(answer.json()["hits"]) == 2, answer.text
        finally:
            proc.send_signal(signal.SIGTERM)
            output = proc.communicate(timeout=60)[0]
        assert "Traceback" not in output and secure["password"] not in output, output

    bad_key = str(_key_file(tmp_path, "bm9wZTpub3Bl", "key"))
    refused = _cli(
        [
            "serve",
            "-i",
            "served",
            "--es-url",
            secure["url"],
            "--es-ca-certs",
            secure["ca"],
            "--es-api-key-file",
            bad_key,
        ],
        tmp_path,
    )
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 1 and len(lines) == 1 and "refused the credentials" in lines[0], refused.stderr
