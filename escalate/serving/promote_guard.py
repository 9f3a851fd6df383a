"""What keeps a promotion whole: one at a time (a file lock), and signals turned into its rollback.

The lock is fcntl.flock on serving/promote.lock: the OS releases it when its holder exits in any way,
SIGKILL included, so a refusal always names a live promotion and no stale lock needs clearing. The
holder writes its pid and start time into the file for the refusal to quote. The descriptor is not
inherited (Python's default), so the gateway and vLLM servers a promotion starts never hold it.

`Signals` makes SIGTERM and SIGINT exceptions in the main thread for the promotion's duration, so
its rollback runs: SIGTERM raises Interrupted, SIGINT KeyboardInterrupt (both BaseException, so no
`except Exception` on the way swallows them). Only the first signal raises; later ones, and any
after `defer()` (the commit and the rollback, which must not be cut short), are held, and on exit
a held signal is raised again under the previous handlers, unless an exception is already leaving.
Python runs signal handlers in the main thread only: elsewhere (a worker thread) nothing is installed.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

HANDLED = (signal.SIGTERM, signal.SIGINT)


class Busy(RuntimeError):
    """Another promotion holds the lock."""


class Interrupted(BaseException):
    """A signal (SIGTERM) stopped the promotion."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


class PromotionLock:
    """An exclusive, non-blocking flock on `path`; Busy names the holder."""

    def __init__(self, path: Path) -> None:
        self.path, self.fd = path, -1

    def __enter__(self) -> PromotionLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(os.pread(fd, 4096, 0))
            os.close(fd)
            raise Busy(f"another promotion is running ({holder}; lock {self.path}); wait for it to finish. "
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


def _holder(raw: bytes) -> str:
    try:
        info = json.loads(raw)
        return f"pid {info['pid']}, started {info['started']}"
    except (ValueError, KeyError, TypeError):  # the holder has not written it yet
        return "pid and start time not written yet"


class Signals:
    """SIGTERM/SIGINT as exceptions in the main thread while entered; previous handlers restored on exit."""

    def __init__(self) -> None:
        self.previous: dict[int, Any] = {}
        self.raising = True
        self.held: int | None = None  # a signal received while not raising

    def __enter__(self) -> Signals:
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self._handle) for sig in HANDLED}
        return self

    def defer(self) -> None:
        """From now on hold signals instead of raising them (a commit or a rollback is running)."""
        self.raising = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self.raising:
            self.held = self.held or signum
            return
        self.raising = False  # one exception; the rollback it starts is not cut short by another
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Interrupted(signum)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        if self.held is not None and kind is None:
            signal.raise_signal(self.held)  # the caller's own handling of it, now that the promotion is whole
