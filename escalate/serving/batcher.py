"""Concurrent requests to the in-process token-level (CITER) decoder, decoded together: continuous batching.

One thread owns the models. A request waits in a queue with a future; before every decode step the
thread admits waiting requests, up to `max_batch` rows in flight (escalate.citer.decode.DecodeBatch:
a request joins the rows already decoding, it does not wait for them to finish), steps every row by
one token, and resolves the futures of the rows that finished. Each answer's tokens, sources and costs
are those of decoding it alone, whatever it shared steps with, so concurrency changes throughput,
never an answer. On CPU one decode step of a small model costs nearly the same for one row as for
eight (its time is per-pass overhead and weight reads), which is where the throughput comes from
(bench/citer_concurrency.py).

    batcher = DecodeBatcher(cascade.decoder, max_new_tokens=96, max_batch=16)
    gens = batcher.generate(["Question: ...\\nAnswer:"])   # from any number of threads at once
    batcher.close()
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and transformers: a gateway serving query-level bundles never loads them
    from escalate.citer.decode import TokenLevelDecoder, TokenLevelGeneration


class BatcherClosed(RuntimeError):
    """The batcher was closed before this request finished."""


class DecodeBatcher:
    """Decodes the requests of any number of threads together, on one thread that owns the models."""

    def __init__(self, decoder: TokenLevelDecoder, max_new_tokens: int, max_batch: int) -> None:
        if max_new_tokens < 1 or max_batch < 1:
            raise ValueError(f"max_new_tokens and max_batch must be >= 1, got {max_new_tokens}, {max_batch}")
        self.decoder, self.max_new_tokens, self.max_batch = decoder, max_new_tokens, max_batch
        self._waiting: deque[tuple[list[int], int, Future]] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="citer-batcher", daemon=True)
        self._thread.start()

    def submit(self, context: list[int], max_new_tokens: int | None = None) -> Future[TokenLevelGeneration]:
        """Queue one token-id context; its future resolves to its generation."""
        budget = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        if not context or budget < 1:
            raise ValueError("a context needs at least one token and a budget of at least one new token")
        future: Future[TokenLevelGeneration] = Future()
        with self._wake:
            if self._closed:
                raise BatcherClosed("the decoder is closed")
            self._waiting.append((context, budget, future))
            self._wake.notify()
        return future

    def generate(self, prompts: list[str]) -> list[TokenLevelGeneration]:
        """TokenLevelDecoder.generate's answers, decoded beside every other caller's."""
        futures = [self.submit(self.decoder.encode(p)) for p in prompts]  # tokenised here, off the model thread
        return [f.result() for f in futures]

    def close(self) -> None:
        """Stop after the current step; requests not yet finished fail with BatcherClosed."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()

    def _run(self) -> None:
        batch = self.decoder.batch()
        while True:
            with self._wake:
                while not self._closed and not self._waiting and not batch:
                    self._wake.wait()
                if self._closed:
                    break
                joining = [self._waiting.popleft() for _ in range(min(len(self._waiting), self.max_batch - len(batch)))]
            joining = [(c, b, f) for c, b, f in joining if f.set_running_or_notify_cancel()]
            try:
                if joining:
                    batch.admit(*map(list, zip(*joining)))
                for future, gen in batch.step():
                    future.set_result(gen)
            except Exception as exc:  # a failed step fails every row in it: each caller gets the error (a 500)
                _fail([row.tag for row in batch.rows] + [f for *_, f in joining], exc)
                batch = self.decoder.batch()
        with self._wake:
            waiting = [f for *_, f in self._waiting if f.set_running_or_notify_cancel()]
            self._waiting.clear()
        _fail([row.tag for row in batch.rows] + waiting, BatcherClosed("the decoder closed before this request finished"))


def _fail(futures: list[Future], exc: BaseException) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(exc)
