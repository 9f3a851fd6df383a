"""One process at a time: an exclusive, non-blocking file lock that names its holder when it refuses.

fcntl.flock: the OS releases it when its holder exits in any way, SIGKILL included, so a refusal always
names a live process and no stale lock needs clearing. The holder writes its pid and start time into
the file for the refusal to quote. The descriptor is not inherited (Python's default), so servers the
holder starts never hold it. Promotions (serving/promote_guard.py) and retrain runs of one profile
(flows/retrain.py) take one each; alias moves of one registered model (registry/aliases.py) take one
for the moment of a read-check-write, waiting a little for each other instead of refusing.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

POLL_S = 0.02  # how often a waiting FileLock tries again


class Busy(RuntimeError):
    """Another process holds the lock."""


class FileLock:
    """An exclusive flock on `path`; Busy names the holder. `what` names the work it guards. wait_s: how
    long to wait for the holder to finish (0: refuse at once; None: as long as it takes)."""

    what = "run"

    def __init__(self, path: Path, what: str | None = None, wait_s: float | None = 0.0) -> None:
        self.path, self.fd = path, -1
        self.what = what or self.what
        self.wait_s = wait_s

    def __enter__(self) -> FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _flock(fd, self.wait_s)
        except BlockingIOError:
            holder = _holder(os.pread(fd, 4096, 0))
            os.close(fd)
            raise Busy(f"another {self.what} is running ({holder}; lock {self.path}); wait for it to finish. "
                       "The lock is the OS's: it goes with its holder, even a killed one") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(),
                                  "started": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        os.ftruncate(self.fd, 0)  # before unlocking: the next holder writes its own
        os.close(self.fd)  # releases the flock
        self.fd = -1


def _flock(fd: int, wait_s: float | None) -> None:
    """Lock `fd`, waiting up to wait_s (None: without limit); BlockingIOError when it stays held."""
    if wait_s is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(POLL_S)


def _holder(raw: bytes) -> str:
    try:
        info = json.loads(raw)
        return f"pid {info['pid']}, started {info['started']}"
    except (ValueError, KeyError, TypeError):  # the holder has not written it yet
        return "pid and start time not written yet"
