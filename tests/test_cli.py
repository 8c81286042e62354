from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hybrid.cli.app import app
from typer.testing import CliRunner

from tests.conftest import FIXTURES

runner = CliRunner()
COMMANDS = ["index", "search", "info", "quickstart", "eval", "mine", "negatives", "train"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output and len(result.output) > 200


def test_top_level_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output


def test_missing_corpus_error_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["index", str(tmp_path / "nope.jsonl"), "--index", "x", "--store", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: {tmp_path / 'nope.jsonl'}: corpus not found; check the path"


def test_unknown_format_error_line(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["index", str(FIXTURES / "custom.jsonl"), "--index", "x", "--format", "xml", "--store", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert result.stderr.strip() == "Error: unknown corpus format 'xml'; choose one of beir, msmarco, dpr, jsonl"


def test_unreachable_cluster_error_line() -> None:
    result = runner.invoke(app, ["info", "--index", "x", "--es-url", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "Error: cannot reach Elasticsearch at http://127.0.0.1:9; check --es-url (or HYBRID_ES_URL) "
        "and that the cluster is running"
    )


def test_bad_url_and_unknown_index(tmp_path: Path) -> None:
    result = runner.invoke(app, ["info", "--index", "x", "--es-url", "localhost:9200"])
    assert result.stderr.strip() == "Error: --es-url must start with http:// or https://, got 'localhost:9200'"
    result = runner.invoke(app, ["info", "--index", "missing", "--store", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("Error: index 'missing' not found in")


def test_index_search_info_on_embedded(tmp_path: Path, tiny_model: Path, beir_small: Path) -> None:
    store = ["--store", str(tmp_path / "store")]
    result = runner.invoke(
        app, ["index", str(beir_small), "--index", "docs", "--model", str(tiny_model), "--quiet", "--json", *store]
    )
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert (stats["count"], stats["written"], stats["backend"]) == (12, 12, "embedded")

    result = runner.invoke(
        app, ["search", "electricity", "--index", "docs", "--mode", "bm25", "--json", "-k", "2", *store]
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["rank"] for r in rows] == [1, 2] and {r["id"] for r in rows} == {"d1", "d2"}

    for mode in ("dense", "hybrid"):
        result = runner.invoke(app, ["search", "honey bees", "--index", "docs", "--mode", mode, "--json", *store])
        assert result.exit_code == 0, result.output
        assert len(result.stdout.splitlines()) == 10

    result = runner.invoke(app, ["info", "--index", "docs", "--json", *store])
    info = json.loads(result.stdout)
    assert (info["count"], info["dims"], info["version"]) == (12, 32, "docs-v000001")
    assert info["recipe"]["model_path"] == str(tiny_model.resolve()) and len(info["recipe"]["model_hash"]) == 16
    assert info["recipe"]["passage_max_length"] == 64 and info["recipe"]["pooling"] == "mean"
    result = runner.invoke(app, ["info", "--index", "docs", *store])
    assert result.exit_code == 0 and "model hash" in result.stdout and "passage_max_length=64" in result.stdout
    # adding to the index without -m embeds with the index's own model (not the default MiniLM)
    result = runner.invoke(app, ["index", str(beir_small), "--index", "docs", "--quiet", "--json", *store])
    assert result.exit_code == 0, result.output
    assert (json.loads(result.stdout)["written"], json.loads(result.stdout)["count"]) == (0, 12)

    result = runner.invoke(app, ["search", "x", "--index", "docs", "--mode", "fuzzy", *store])
    assert result.exit_code == 1
    assert result.stderr.strip() == "Error: unknown mode 'fuzzy'; choose one of bm25, dense, hybrid"


@pytest.mark.es
def test_index_and_search_on_elasticsearch(es_url: str, es_prefix: str, tiny_model: Path, beir_small: Path) -> None:
    from hybrid.backends.elastic import ElasticBackend
    from hybrid.config import ElasticConfig

    name = f"{es_prefix}-cli"
    try:
        result = runner.invoke(
            app, ["index", str(beir_small), "-i", name, "-m", str(tiny_model), "-q", "--json", "--es-url", es_url]
        )
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["count"] == 12
        result = runner.invoke(
            app, ["search", "ocean tides", "-i", name, "--mode", "hybrid", "--json", "--es-url", es_url]
        )
        assert result.exit_code == 0, result.output
        assert "d6" in [json.loads(line)["id"] for line in result.stdout.splitlines()]
        result = runner.invoke(app, ["info", "-i", name, "--json", "--es-url", es_url])
        info = json.loads(result.stdout)
        assert info["backend"] == "elasticsearch" and info["extra"]["mapping"]["properties"]["vector"]["dims"] == 32
    finally:
        ElasticBackend(ElasticConfig(url=es_url)).drop(name)


def test_quickstart_runs_on_the_shipped_demo(tmp_path: Path) -> None:
    result = runner.invoke(app, ["quickstart", "--store", str(tmp_path / "store"), "-q", "-k", "1"])
    assert result.exit_code == 0, result.output
    assert "synthetic" in result.stdout
    assert "documents in index (verified)" in result.stdout and "35" in result.stdout
    assert "why is my bread dense" in result.stdout  # a demo query was run in every mode
    assert result.stdout.count("hybrid") >= 2


@pytest.mark.es
def test_quickstart_redacts_the_password_in_its_url(es_url: str, es_prefix: str) -> None:
    from hybrid.backends.elastic import ElasticBackend
    from hybrid.config import ElasticConfig

    secret = "s3cret-in-the-url"
    with_password = es_url.replace("://", f"://someone:{secret}@", 1)  # security off: the node ignores it
    name = f"{es_prefix}-qs"
    try:
        args = [
            "quickstart",
            "-i",
            name,
            "--limit",
            "3",
            "--query",
            "bread",
            "-k",
            "1",
            "-q",
            "--es-url",
            with_password,
        ]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert secret not in result.output and "someone:***@" in result.stdout, result.stdout
    finally:
        ElasticBackend(ElasticConfig(url=es_url)).drop(name)


def test_unreachable_cluster_is_one_line_without_tracebacks() -> None:
    import subprocess
    import sys

    args = [sys.executable, "-m", "hybrid.cli", "search", "x", "-i", "y", "--es-url", "http://127.0.0.1:1"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "Error: cannot reach Elasticsearch at http://127.0.0.1:1; check --es-url (or HYBRID_ES_URL) and that the "
        "cluster is running"
    ]
    verbose = subprocess.run([*args[:3], "-v", *args[3:]], capture_output=True, text=True, timeout=120)
    assert "Retrying request" in verbose.stderr  # the transport's detail is there with -v


def test_redact_url() -> None:
    from hybrid.config import ElasticConfig, redact_url

    assert redact_url("https://elastic:s3cret@es.example:9200") == "https://elastic:***@es.example:9200"
    assert redact_url("http://token@host") == "http://***@host"
    assert redact_url("http://host:9200/path@x") == "http://host:9200/path@x"
    assert redact_url("http://u:p@ss@host:1/x") == "http://u:***@host:1/x"  # an @ inside the password
    config = ElasticConfig(url="https://elastic:s3cret@es.example:9200", api_key="k3y")
    assert "s3cret" not in repr(config) and "k3y" not in repr(config)


def test_several_node_urls() -> None:
    from hybrid.config import ElasticConfig
    from hybrid.errors import ConfigError

    config = ElasticConfig(url="http://a:9200, http://u:pa,ss@b:9200,https://c:9201/")
    assert config.urls == ["http://a:9200", "http://u:pa,ss@b:9200", "https://c:9201/"]  # a comma in a password
    assert config.display_url == "http://a:9200,http://u:***@b:9200,https://c:9201/"
    with pytest.raises(ConfigError, match="must start with http"):
        ElasticConfig(url="a:9200,http://b:9200")


def test_secrets_stay_out_of_messages(tmp_path: Path) -> None:
    import subprocess
    import sys

    cli = [sys.executable, "-m", "hybrid.cli", "info", "-i", "x"]
    done = subprocess.run([*cli, "--es-url", "http://elastic:s3cret@127.0.0.1:1"], capture_output=True, text=True)
    assert done.returncode == 1 and "s3cret" not in done.stderr + done.stdout
    assert "http://elastic:***@127.0.0.1:1" in done.stderr

    warned = subprocess.run(
        [*cli, "--es-url", "http://127.0.0.1:1", "--es-user", "u", "--es-password", "hunter2"],
        capture_output=True,
        text=True,
    )
    assert "--es-password on the command line is visible" in warned.stderr and "hunter2" not in warned.stderr

    empty = tmp_path / "key"
    empty.write_text("\n")
    bad = subprocess.run(
        [*cli, "--es-url", "http://127.0.0.1:1", "--es-api-key-file", str(empty)], capture_output=True, text=True
    )
    assert bad.returncode == 1 and "is empty" in bad.stderr


@pytest.mark.es
def test_api_key_from_a_file(es_url: str, tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("c2VjcmV0LWtleS12YWx1ZQ==\n")  # a security-less node accepts any key
    result = runner.invoke(app, ["info", "-i", "no-such-index", "--es-url", es_url, "--es-api-key-file", str(key)])
    assert result.exit_code == 1 and "not found" in result.output and "c2VjcmV0" not in result.output


def test_client_errors_mid_command_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """An error the Elasticsearch client raises after connecting (a 5xx, a lost node) is one
    ``Error:`` line and exit 1, like hybrid's own errors; anything else still propagates."""
    import elastic_transport
    import elasticsearch
    import typer
    from hybrid.cli.common import handle_errors

    meta = elastic_transport.ApiResponseMeta(
        status=503,
        http_version="1.1",
        headers=elastic_transport.HttpHeaders(),
        duration=0.0,
        node=elastic_transport.NodeConfig("http", "127.0.0.1", 9200),
    )
    body = {"error": {"type": "search_phase_execution_exception", "reason": "all shards failed"}}
    raised: list[Exception] = [
        elasticsearch.ApiError("search_phase_execution_exception", meta, body),
        elastic_transport.ConnectionError("Connection refused"),
        ValueError("a bug"),
    ]
    lines = []
    for exc in raised[:2]:
        with pytest.raises(typer.Exit) as exit_:
            handle_errors(lambda exc=exc: (_ for _ in ()).throw(exc))()
        assert exit_.value.exit_code == 1
        lines.append(capsys.readouterr().err.strip())
    assert lines == [
        "Error: Elasticsearch answered HTTP 503: all shards failed",
        "Error: Elasticsearch could not be reached (ConnectionError): Connection refused; check --es-url and "
        "that the cluster is up",
    ]
    with pytest.raises(ValueError, match="a bug"):
        handle_errors(lambda: (_ for _ in ()).throw(raised[2]))()


def test_writers_keep_a_swapped_out_version_120_s_by_default(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Long enough for a running server to load the new model and switch; 0 stays possible."""
    import typer.main

    command: Any = typer.main.get_command(app)
    for name in ("index", "train"):
        grace = next(p for p in command.commands[name].params if p.name == "grace")
        assert (grace.default, grace.envvar) == (120.0, "HYBRID_GRACE"), name
    store = ["--store", str(tmp_path / "store"), "-q"]
    args = ["index", str(FIXTURES / "beir-small"), "-i", "docs", "-m", str(tiny_model), *store]
    assert runner.invoke(app, args).exit_code == 0
    monkeypatch.delenv("HYBRID_GRACE")
    rebuilt = runner.invoke(app, [*args, "--recreate", "--grace", "1"])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "keeping the previous version 1 s (--grace)" in rebuilt.output
    assert sorted(p.name for p in (tmp_path / "store" / "docs").iterdir() if p.name.startswith("docs-v")) == [
        "docs-v000002"
    ]
