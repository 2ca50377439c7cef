"""One writer per run directory: an exclusive lock held for the whole run.

The lock is an OS file lock (``filelock``: ``flock`` on Unix) on ``<run>/lock``, so the
system releases it when its process ends in any way, ``kill -9`` included: a lock left by a
dead process never blocks a resume. The holder writes its PID, host and start time to
``<run>/lock.owner`` so that a second process can say who holds the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = "lock"
OWNER_FILE = "lock.owner"


class RunLockedError(RuntimeError):
    """Another process is writing this run directory."""


def _holder(directory: Path) -> str:
    try:
        owner = json.loads((directory / OWNER_FILE).read_text(encoding="utf-8"))
        return (
            f"process {owner['pid']} on {owner['host']} (since {owner['since']})"
            if owner.get("host") != socket.gethostname()
            else f"process {owner['pid']} (since {owner['since']})"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _write_owner(directory: Path) -> None:
    owner = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    tmp = directory / (OWNER_FILE + ".tmp")
    tmp.write_text(json.dumps(owner) + "\n", encoding="utf-8")
    os.replace(tmp, directory / OWNER_FILE)


@contextlib.contextmanager
def run_lock(directory: str | Path) -> Iterator[None]:
    """Hold the run directory's lock (creating the directory) or raise RunLockedError."""
    from filelock import FileLock, Timeout

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(directory / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunLockedError(
            f"{directory} is in use by {_holder(directory)}: one process at a time may write "
            "a run; wait for it to finish, or stop it and continue with --resume"
        ) from None
    try:
        _write_owner(directory)
        yield
    finally:
        (directory / OWNER_FILE).unlink(missing_ok=True)
        lock.release()
