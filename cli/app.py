"""The ``hybrid`` Typer application."""

from __future__ import annotations

import typer

from . import evaluate as evaluate_cmd
from . import index as index_cmd
from . import info as info_cmd
from . import mine as mine_cmd
from . import negatives as negatives_cmd
from . import quickstart as quickstart_cmd
from . import search as search_cmd
from . import serve as serve_cmd
from . import sync as sync_cmd
from . import train as train_cmd

app = typer.Typer(
    name="hybrid",
    help="Index, search, mine, train (SimANS) and evaluate dense retrieval over Elasticsearch "
    "or an embedded Lucene + FAISS store.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("index")(index_cmd.index)
app.command("search")(search_cmd.search)
app.command("serve")(serve_cmd.serve)
app.command("info")(info_cmd.info)
app.command("sync")(sync_cmd.sync)
app.command("quickstart")(quickstart_cmd.quickstart)
app.command("eval")(evaluate_cmd.evaluate)
app.command("mine")(mine_cmd.mine)
app.command("train")(train_cmd.train)
app.command("negatives")(negatives_cmd.negatives)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log library details to stderr."),
) -> None:
    from .common import setup_logging

    setup_logging(verbose)


def main() -> None:
    """Console-script entry point."""
    app()
