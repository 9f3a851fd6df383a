"""A bounded queue and worker threads: work the gateway hands off after a response (shadow labels, a
challenger's scoring), never waited on by a request."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class WorkQueue(Generic[T]):
    """`handle(item)` on one of `workers` threads for each item offered while the queue has room."""

    def __init__(self, handle: Callable[[T], None], name: str, workers: int, max_queued: int) -> None:
        self._handle = handle
        self._queue: queue.Queue[T | None] = queue.Queue(max_queued)
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def full(self) -> bool:
        return self._queue.full()

    def offer(self, item: T) -> bool:
        """Queue `item` without waiting; False when the queue has no room."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            return False
        return True

    def close(self, unhandled: Callable[[T], None] = lambda item: None, timeout_s: float = 10.0) -> None:
        """Give each item still queued to `unhandled` (a stopping gateway waits on no new work), let the
        items in hand finish, then stop the workers."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                unhandled(item)
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout_s)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            self._handle(item)
