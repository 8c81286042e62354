"""Helpers for tests that check what a command leaves running after it exits."""

from __future__ import annotations

from pathlib import Path


def session_members(sid: int) -> list[int]:
    """Processes still alive in session ``sid``: a command started with ``start_new_session``
    that left a detached child (a shell, a JVM) behind would show it here."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        if int(fields[3]) == sid and fields[0] != "Z":  # after the name: state, ppid, pgrp, session
            alive.append(int(stat.parent.name))
    return alive
