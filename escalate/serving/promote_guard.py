"""What keeps a promotion whole: one at a time (a file lock), and signals turned into its rollback.

The lock (escalate.locks.FileLock) is fcntl.flock on serving/promote.lock: released by the OS when its
holder exits in any way, SIGKILL included, and not inherited by the gateway and vLLM servers it starts.

`Signals` makes SIGTERM and SIGINT exceptions in the main thread for the promotion's duration, so
its rollback runs: SIGTERM raises Interrupted, SIGINT KeyboardInterrupt (both BaseException, so no
`except Exception` on the way swallows them). Only the first signal raises; later ones, and any
after `defer()` (the commit and the rollback, which must not be cut short), are held, and on exit
a held signal is raised again under the previous handlers, unless an exception is already leaving.
Python runs signal handlers in the main thread only: elsewhere (a worker thread) nothing is installed.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

from escalate.locks import FileLock

HANDLED = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
    """A signal (SIGTERM) stopped the promotion."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


class PromotionLock(FileLock):
    """The one-promotion-at-a-time lock."""

    what = "promotion"


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
