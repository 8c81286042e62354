"""``hybrid sync``: give vectors to the documents an application wrote after adoption."""

from __future__ import annotations

import json
import signal
import threading
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .common import (
    BackendOptions,
    DeviceOpt,
    EncodeBatchOpt,
    IndexOpt,
    QuietOpt,
    backend_options,
    console,
    erase,
    err_console,
    handle_errors,
)

if TYPE_CHECKING:
    from hybrid.sync import PassStats


@handle_errors
@backend_options
def sync(
    index: IndexOpt,
    follow: Annotated[
        bool,
        typer.Option("--follow", help="Keep syncing every --interval seconds; SIGTERM/Ctrl-C stops after the batch."),
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", help="--follow: seconds to wait after a pass that found nothing to embed.")
    ] = 30.0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Documents per read/encode/write batch.")] = 256,
    encode_batch: EncodeBatchOpt = 32,
    device: DeviceOpt = None,
    changed: Annotated[
        bool,
        typer.Option(
            "--changed/--no-changed",
            help="Also re-embed documents whose text changed since their vector was made (where hybrid recorded "
            "the text's hash); reads the text of documents written since the last check.",
        ),
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print each pass's stats as one JSON line.")] = False,
    conn: BackendOptions = BackendOptions(),
    quiet: QuietOpt = False,
) -> None:
    """Embed the documents of an index that lack its active vector (written by an application
    after adoption, or by other writers), and those whose text changed. Once, or --follow."""
    from hybrid.sync import SyncJob
    from hybrid.sync import sync as run_sync

    job = SyncJob(
        index=index,
        follow=follow,
        interval=interval,
        batch_size=batch_size,
        encode_batch=encode_batch,
        device=device,
        changed=changed,
    )
    stop = threading.Event()
    restore = _stop_on_signals(stop, quiet)
    backend = conn.open()
    try:
        with _SyncProgress(quiet) as bar:
            for stats in run_sync(job, backend, bar.update, stop):
                bar.finish(stats)
                _report(stats, as_json)
    finally:
        restore()
        backend.close()


def _stop_on_signals(stop: threading.Event, quiet: bool) -> Any:
    """SIGTERM and SIGINT end the run after the batch in hand (status 0); a second one stops
    at once. Returns what puts the previous handlers back."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum: int, _frame: object) -> None:
        stop.set()
        for sig, old in previous.items():
            signal.signal(sig, old)
        if not quiet:
            err_console.print("stopping after the batch in hand", markup=False, highlight=False)

    for sig in previous:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def _report(stats: PassStats, as_json: bool) -> None:
    from dataclasses import asdict

    if as_json:
        print(json.dumps(asdict(stats)), flush=True)
        return
    line = (
        f"pass {stats.number} ({stats.version}): {stats.found:,} missing, {stats.changed:,} changed "
        f"of {stats.checked:,} checked; embedded {stats.embedded:,}; {stats.skipped:,} skipped without text; "
        f"{stats.conflicts:,} rewritten meanwhile (next pass), {stats.deleted:,} deleted meanwhile; "
        f"{stats.seconds:.1f}s{' (stopped)' if stats.interrupted else ''}"
    )
    console.print(line, markup=False, highlight=False, soft_wrap=True)


class _SyncProgress:
    """A bar per pass that has documents to read; passes with nothing to do draw nothing."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.progress = Progress(
            TextColumn("[bold]pass {task.fields[number]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("embedded {task.fields[embedded]}"),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        )
        self.tasks: dict[int, Any] = {}
        self.started = False

    def __enter__(self) -> _SyncProgress:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if not (self.tasks or self.started):  # started by the first pass with work
            return
        if kind is not None and issubclass(kind, Exception):
            erase(self.progress)  # the error line stands alone
        else:
            self.progress.stop()

    def update(self, stats: PassStats) -> None:
        if self.quiet or not stats.total:
            return
        task = self.tasks.get(stats.number)
        if task is None:
            self.progress.start()
            self.started = True
            task = self.tasks[stats.number] = self.progress.add_task(
                "sync", total=stats.total, number=stats.number, embedded=stats.embedded
            )
        self.progress.update(task, completed=stats.done, total=max(stats.total, stats.done), embedded=stats.embedded)

    def finish(self, stats: PassStats) -> None:
        task = self.tasks.pop(stats.number, None)
        if task is not None:
            self.progress.remove_task(task)
