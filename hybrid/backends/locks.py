"""One writer per index: a second ``hybrid index`` (or a training refresh) on the same index
refuses with a message naming the holder, instead of deleting the version the first is
building.

The embedded store takes an exclusive ``flock`` on ``<index>/.write.lock`` (the kernel
releases it when the process dies). On Elasticsearch the lock is a document in the
``hybrid-locks`` index created with ``op_type=create`` (atomic: exactly one creator wins);
it carries a heartbeat, and a lock whose holder stopped beating for ``stale_s`` seconds, or
whose process is gone from this host, is taken over.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hybrid.errors import IndexBusyError

LOCK_INDEX = "hybrid-locks"
HEARTBEAT_S = 30.0


def holder() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
        "heartbeat": time.time(),
    }


def _busy(name: str, info: dict[str, Any]) -> IndexBusyError:
    return IndexBusyError(
        f"index '{name}' is being written by process {info.get('pid', '?')} on {info.get('host', '?')} "
        f"(since {info.get('since', '?')}); wait for it to finish, or stop it and re-run to resume"
    )


class FileLock:
    """Exclusive lock on a file, held until :meth:`release` or process exit."""

    def __init__(self, path: Path, name: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info: dict[str, Any] = {}
            with contextlib.suppress(OSError, ValueError):
                info = json.loads(os.pread(self.fd, 4096, 0) or b"{}")
            os.close(self.fd)
            raise _busy(name, info) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(holder()).encode(), 0)

    def beat(self) -> None:
        """Nothing to renew: the kernel holds the lock for the process."""

    def release(self) -> None:
        if self.fd >= 0:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1


class ElasticLock:
    """A lock document per index name in ``hybrid-locks``, owned through a random token: a
    writer whose lock was taken over (it looked dead) can neither renew nor delete the new
    holder's lock, and learns it has lost it."""

    def __init__(self, client: Any, name: str, stale_s: float = 600.0) -> None:
        import elasticsearch

        self.client = client
        self.name = name
        self.held = False
        self.token = secrets.token_hex(16)
        self._beat = 0.0
        with contextlib.suppress(elasticsearch.BadRequestError):  # already there (no HEAD: fewer privileges)
            client.indices.create(
                index=LOCK_INDEX,
                settings={"number_of_shards": 1, "auto_expand_replicas": "0-1"},
                mappings={"dynamic": False, "properties": {}},
            )
        for _ in range(5):
            try:
                client.create(index=LOCK_INDEX, id=name, document={**holder(), "token": self.token}, refresh=True)
                self.held, self._beat = True, time.monotonic()
                return
            except elasticsearch.ConflictError:
                try:
                    current = client.get(index=LOCK_INDEX, id=name)
                except elasticsearch.NotFoundError:
                    continue  # released meanwhile: try again
                info = current["_source"]
                if not _stale(info, stale_s):
                    raise _busy(name, info) from None
                with contextlib.suppress(elasticsearch.ConflictError, elasticsearch.NotFoundError):
                    client.delete(  # take over, unless someone else did just now
                        index=LOCK_INDEX,
                        id=name,
                        if_seq_no=current["_seq_no"],
                        if_primary_term=current["_primary_term"],
                        refresh=True,
                    )
        raise _busy(name, {})

    def _mine(self) -> dict[str, Any] | None:
        """The lock document when this writer still owns it, else ``None``."""
        import elasticsearch

        try:
            current = self.client.get(index=LOCK_INDEX, id=self.name)
        except elasticsearch.NotFoundError:
            return None
        return dict(current) if current["_source"].get("token") == self.token else None

    def beat(self) -> None:
        """Renew the heartbeat (at most every HEARTBEAT_S seconds); raise if the lock was lost."""
        import elasticsearch

        if not self.held or time.monotonic() - self._beat < HEARTBEAT_S:
            return
        current = self._mine()
        try:
            if current is not None:
                self.client.update(
                    index=LOCK_INDEX,
                    id=self.name,
                    doc={"heartbeat": time.time()},
                    if_seq_no=current["_seq_no"],
                    if_primary_term=current["_primary_term"],
                )
        except elasticsearch.ConflictError:
            current = None
        if current is None:
            self.held = False
            raise IndexBusyError(
                f"this process lost the write lock on '{self.name}' (it was taken over as stale); stopping"
            )
        self._beat = time.monotonic()

    def release(self) -> None:
        import elasticsearch

        if not self.held:
            return
        self.held = False
        current = self._mine()
        if current is not None:
            with contextlib.suppress(elasticsearch.NotFoundError, elasticsearch.ConflictError):
                self.client.delete(
                    index=LOCK_INDEX,
                    id=self.name,
                    if_seq_no=current["_seq_no"],
                    if_primary_term=current["_primary_term"],
                    refresh=True,
                )


def _stale(info: dict[str, Any], stale_s: float) -> bool:
    if time.time() - float(info.get("heartbeat", 0)) > stale_s:
        return True
    if info.get("host") == socket.gethostname():
        try:
            os.kill(int(info.get("pid", 0)), 0)
        except ProcessLookupError:
            return True  # the holder died on this machine
        except (PermissionError, ValueError):
            return False
    return False
