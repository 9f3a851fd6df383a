"""Shadow labels: a fraction of the answers the SLM kept is also asked of the LLM, off the request path,
so the traffic log carries a label for them and the gateway can say how often keeping was right.

The label is agreement: the LLM's answer graded against the SLM's kept answer with the project's own
grader (data.graders, numeric: gateway questions carry no choices), so "7" and "The answer is 7.00"
agree. It measures the accept-accuracy the threshold was fitted for (P(SLM right | kept) on calib)
with the LLM standing in for the gold answer.

The request only enqueues (`Shadow.offer`): a sampler draws the configured fraction of kept answers
and holds them to a per-minute budget (a sliding 60 s window); a full queue or a spent budget drops
the shadow call and counts the drop, never delaying the user. Worker threads ask the LLM, then log
the request's row with its shadow columns: a shadowed row reaches the traffic log once its label is
back (at most the gateway's deadline later), every other row at once.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from escalate.data.graders import EXTRACTORS, GRADERS
from escalate.serving.engine import IN_PROCESS
from escalate.serving.workers import WorkQueue

log = logging.getLogger("escalate.shadow")

WINDOW = 1000  # shadow labels the live accept-accuracy is computed over
BUDGET_WINDOW_S = 60.0  # max_per_minute counts shadow calls in any window this long
MAX_QUEUED = 256  # shadow calls waiting for a worker; more are dropped (and counted)
WORKERS = 2  # shadow calls in flight at once: the LLM's spare capacity is not the user's to spend
Z95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval
AGREED, DISAGREED, FAILED = "agreed", "disagreed", "failed"


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion: unlike p ± z·se it stays inside [0, 1] and
    is not zero-width at 0 or n successes, which a small shadow sample often has. NaN for n = 0."""
    if n == 0:
        return math.nan, math.nan
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n]; got {successes} of {n}")
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def agrees(llm_text: str, slm_answer: Any) -> bool:
    """Whether the LLM's answer is the SLM's kept one: the LLM's text graded with the SLM's parsed answer
    as gold. An SLM answer without a parsed final answer agrees with nothing."""
    return slm_answer is not None and GRADERS["numeric"](llm_text, str(slm_answer))


def shadowable(result: Mapping[str, Any], fallback: str | None, served_by: str) -> bool:
    """A kept answer that a router chose to keep, from a served SLM (a fallback, an escalated answer
    or an in-process token-level one has nothing to shadow)."""
    return result["model"] == "slm" and not result["escalated"] and fallback is None and served_by != IN_PROCESS


def calib_figures(eval_dir: Path | str | None, strategy: str) -> dict[str, float]:
    """What the bundle's evaluation (eval/metrics.json) says calib gave at the deployed strategy's threshold:
    accept_accuracy and escalation_rate, those it holds ({} for a bundle without them, e.g. one evaluated
    before they were recorded)."""
    if eval_dir is None:
        return {}
    try:
        rows = json.loads((Path(eval_dir) / "metrics.json").read_text()).get("summary", [])
    except (OSError, ValueError, AttributeError):
        return {}
    row = next((r for r in rows if isinstance(r, dict) and r.get("strategy") == strategy), {})
    named = {"accept_accuracy": row.get("calib_accept_accuracy"), "escalation_rate": row.get("calib_call_rate")}
    return {key: float(value) for key, value in named.items() if isinstance(value, (int, float))}


class Sampler:
    """Which kept answers get a shadow call: each with probability `fraction`, at most `max_per_minute`
    in any 60 s. The RNG and the clock are injected so tests can count."""

    def __init__(self, fraction: float, max_per_minute: int, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 <= fraction <= 1 or max_per_minute < 1:
            raise ValueError(f"shadow fraction must be in [0, 1] and max_per_minute >= 1; got {fraction} and "
                             f"{max_per_minute} (--shadow-fraction, --shadow-max-per-minute)")
        self.fraction, self.max_per_minute = fraction, max_per_minute
        self.rng, self.clock = rng or random.Random(), clock
        self._sent: deque[float] = deque()
        self._lock = threading.Lock()

    def draw(self) -> bool:
        """Whether this kept answer is drawn for shadowing (before the budget)."""
        return self.fraction > 0 and self.rng.random() < self.fraction

    def spend(self) -> bool:
        """Take one shadow call from the budget; False when this minute's is spent."""
        now = self.clock()
        with self._lock:
            while self._sent and now - self._sent[0] >= BUDGET_WINDOW_S:
                self._sent.popleft()
            if len(self._sent) >= self.max_per_minute:
                return False
            self._sent.append(now)
            return True


class LiveAcceptance:
    """The last WINDOW shadow labels of the deployment serving now (a new one starts afresh); the
    gauges read it when /metrics is scraped."""

    def __init__(self, window: int = WINDOW) -> None:
        self._labels: deque[bool] = deque(maxlen=window)
        self._deployment: Hashable = None
        self._lock = threading.Lock()

    def observe(self, agreed: bool, deployment: Hashable) -> None:
        with self._lock:
            if deployment != self._deployment:
                self._deployment = deployment
                self._labels.clear()
            self._labels.append(bool(agreed))

    def counts(self) -> tuple[int, int]:
        """(agreed, labelled) in the window."""
        with self._lock:
            return sum(self._labels), len(self._labels)

    def accuracy(self) -> float:
        agreed, n = self.counts()
        return agreed / n if n else math.nan

    def low(self) -> float:
        return wilson(*self.counts())[0]

    def high(self) -> float:
        return wilson(*self.counts())[1]


@dataclass(frozen=True)
class Job:
    """One kept request waiting for its shadow call: what the traffic log needs of it."""

    question: str
    result: dict[str, Any]
    meta: dict[str, Any]
    headers: Mapping[str, str] | None
    at: float  # when it was answered (time.time()): the row's time, not the label's
    then: Callable[[Mapping[str, Any]], None] | None = None  # given the label (a challenger in shadow grades by it)


class Shadow:
    """The sampler, a bounded queue and WORKERS threads that ask the LLM and log the labelled row.

    `ask(question)` returns the LLM's answer text (the engine's LLM, within the gateway's deadline);
    `log(question, result, meta, headers)` is the traffic log's; `count(outcome)` counts sent, dropped
    and failed calls; `acceptance` collects the labels.
    """

    def __init__(self, sampler: Sampler, ask: Callable[[str], str], log_row: Callable[..., None],
                 count: Callable[[str], None], acceptance: LiveAcceptance, max_queued: int = MAX_QUEUED,
                 workers: int = WORKERS) -> None:
        self.sampler, self.ask, self.log_row, self.count, self.acceptance = sampler, ask, log_row, count, acceptance
        self._work = WorkQueue(self._handle, "shadow", workers if sampler.fraction > 0 else 0, max_queued)

    def offer(self, job: Job, kept: bool) -> bool:
        """Queue a shadow call for a kept answer if it is drawn, the budget allows and the queue has room;
        True when the shadow worker will log the request's row (the caller logs it otherwise)."""
        if not kept or not self.sampler.draw():
            return False
        # full() first, so a full queue spends no budget; offer() still fails if another request took the last place
        if self._work.full() or not self.sampler.spend() or not self._work.offer(job):
            self.count("dropped")
            return False
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Log the rows still queued without a label (counted as dropped: a gateway shutting down should not
        wait on LLM calls), let the calls in flight log theirs, then stop the workers."""
        def unlabelled(job: Job) -> None:
            self.count("dropped")
            self.log_row(job.question, job.result, job.meta, job.headers, job.at)

        self._work.close(unlabelled, timeout_s)

    def _handle(self, job: Job) -> None:
        label = self.label(job)
        self.log_row(job.question, job.result, {**job.meta, "shadow": label}, job.headers, job.at)
        if job.then is not None:
            try:
                job.then(label)
            except Exception:  # the row is logged; a hook's failure must not stop this worker
                log.exception("a shadow label's hook failed")

    def label(self, job: Job) -> dict[str, Any]:
        """Ask the LLM and grade its answer against the kept one; a failed call is a "failed" label."""
        self.count("sent")
        start = time.perf_counter()
        try:
            text = self.ask(job.question)
        except Exception as exc:  # a down LLM, a timeout, a swap: the label is lost, not the row
            log.warning("shadow call failed: %s: %s", type(exc).__name__, exc)
            self.count("failed")
            return {"status": FAILED, "answer": None, "parsed_answer": None, "agrees": None,
                    "latency_s": time.perf_counter() - start}
        seconds = time.perf_counter() - start
        agreed = agrees(text, job.result["parsed_answer"])
        deployment = job.meta["deployment"]
        self.acceptance.observe(agreed, (deployment["model"], str(deployment["version"])))
        return {"status": AGREED if agreed else DISAGREED, "answer": text, "parsed_answer": EXTRACTORS["numeric"](text),
                "agrees": agreed, "latency_s": seconds}
