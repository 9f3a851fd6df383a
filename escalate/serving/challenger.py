"""A challenger in shadow: a second bundle scores the requests the champion answers, off the user's path,
so the two are compared on the same live traffic before any alias moves (issue 18, item 3).

The request only enqueues (`Challenger.offer`, after the response is built); a worker thread runs the
challenger's cascade plan (escalate.cascade.Cascade.plan) on the question and records its route (would it
escalate), its score and, when it keeps, its SLM answer. It never asks the LLM: an LLM step gets an
empty stand-in generation, since the route is decided before it. Its SLM generation is the champion's
own when they are the same server, prompt and sampling (`Tape` records the champion's SLM generations of
the request); otherwise it is generated within a per-minute budget, like shadow labels, and a request
beyond it is skipped and counted. A full queue drops the request (counted), a failure is counted and
logged: none ever reaches the user.

Accept-accuracy needs the LLM's answer: each side's is over its kept answers whose LLM answer is known,
from a shadow label (serving.shadow, which calls the request's hook) or because the champion escalated.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, fields, replace
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from escalate.cascade import Generate, drive
from escalate.models.backends.base import Generation, GenerationBackend, SamplingParams
from escalate.registry.bundle import BundleError
from escalate.serving.engine import IN_PROCESS, Answer, Engine, logprobs_asked
from escalate.serving.shadow import Sampler, agrees
from escalate.serving.workers import WorkQueue

log = logging.getLogger("escalate.challenger")

MAX_QUEUED = 256  # requests waiting for the challenger; more are dropped (and counted)
WORKERS = 1  # the challenger's own SLM calls come out of the champion's servers' spare capacity
TAPE_ENTRIES = 4  # SLM generations a request keeps for the challenger: greedy and sampled, at most
Key = tuple[tuple[str, ...], SamplingParams]
_TAPE: ContextVar[dict[Key, list[list[Generation]]] | None] = ContextVar("challenger_tape", default=None)


class Skipped(RuntimeError):
    """The challenger needed an SLM generation it could not reuse, and this minute's budget is spent."""


class Tape(GenerationBackend):
    """The champion's SLM backend, also keeping the request's generations (in its context) for the challenger."""

    def __init__(self, inner: GenerationBackend) -> None:
        self.inner, self.name = inner, inner.name

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Generation]]:
        return _kept(prompts, params, self.inner.generate(prompts, params))

    async def agenerate(self, prompts: list[str], params: SamplingParams) -> list[list[Generation]]:
        return _kept(prompts, params, await self.inner.agenerate(prompts, params))

    def close(self) -> None:
        self.inner.close()


def _kept(prompts: list[str], params: SamplingParams, out: list[list[Generation]]) -> list[list[Generation]]:
    taped = dict(_TAPE.get() or {})
    taped[(tuple(prompts), params)] = out
    _TAPE.set(dict(list(taped.items())[-TAPE_ENTRIES:]))  # keyed on prompt and sampling: never another request's
    return out


def taped() -> dict[Key, list[list[Generation]]]:
    """The SLM generations the champion made for the request answered in this context."""
    return _TAPE.get() or {}


def tap(engine: Any) -> None:
    """Record a query-level champion's SLM generations from its next request on (idempotent)."""
    if isinstance(engine, Engine) and not isinstance(engine.cascade.slm, Tape):
        engine.cascade = replace(engine.cascade, slm=Tape(engine.cascade.slm))


def shares_slm(champion: Any, challenger: Engine) -> bool:
    """Whether the champion's SLM generation is the one the challenger would make: the same server and
    served model, prompt format, sampling and seed, and at least the log-probabilities its router reads."""
    if not isinstance(champion, Engine):
        return False
    mine, theirs = challenger.deployment, champion.deployment
    router = challenger.cascade.router
    return (mine.endpoints.get("slm") is not None and mine.endpoints.get("slm") == theirs.endpoints.get("slm")
            and mine.served_names.get("slm") == theirs.served_names.get("slm")
            and challenger.cascade.sampling == champion.cascade.sampling and challenger.cascade.seed == champion.cascade.seed
            and logprobs_asked(router, "slm", theirs.top_logprobs.get("slm", 5), mine.logprobs)
            <= logprobs_asked(champion.cascade.router, "slm", theirs.top_logprobs.get("slm", 5), theirs.logprobs))


@dataclass
class Counts:
    """What the comparison has seen; `figures` derives the rates."""

    seen: int = 0  # requests both scored
    routes_agree: int = 0
    champion_escalated: int = 0
    challenger_escalated: int = 0
    both_kept: int = 0
    answers_agree: int = 0  # of both_kept: the same final answer
    champion_labelled: int = 0
    champion_accepted_right: int = 0
    challenger_labelled: int = 0
    challenger_accepted_right: int = 0
    slm_reused: int = 0  # the challenger's SLM generation was the champion's
    slm_generated: int = 0  # the challenger asked the SLM itself
    skipped: int = 0  # its SLM budget was spent, or the champion's answer was a fallback's
    dropped: int = 0  # the queue was full
    failed: int = 0

    def figures(self) -> dict[str, float]:
        def share(k: int, n: int) -> float:
            return k / n if n else math.nan

        return {"route_agreement": share(self.routes_agree, self.seen),
                "champion_escalation_rate": share(self.champion_escalated, self.seen),
                "challenger_escalation_rate": share(self.challenger_escalated, self.seen),
                "answer_agreement": share(self.answers_agree, self.both_kept),
                "champion_accept_accuracy": share(self.champion_accepted_right, self.champion_labelled),
                "challenger_accept_accuracy": share(self.challenger_accepted_right, self.challenger_labelled)}

    def to_dict(self) -> dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in fields(self)},
                **{k: None if math.isnan(v) else v for k, v in self.figures().items()}}


@dataclass(frozen=True)
class Verdict:
    """The challenger's reading of one request."""

    escalated: bool
    score: float
    parsed_answer: Any  # its SLM's final answer when it keeps, else None


class Pending:
    """One request on its way through the challenger and maybe the shadow labeller, which finish in
    either order: the challenger's accept-accuracy needs both its verdict and the LLM's answer."""

    def __init__(self, challenger: Challenger, question: str, answer: Answer) -> None:
        result = answer.result
        self.challenger, self.question = challenger, question
        self.champion_escalated = bool(result["escalated"])
        self.champion_answer = result["parsed_answer"]
        self.llm_text: str | None = str(result["answer"]) if self.champion_escalated else None
        self.verdict: Verdict | None = None
        self._lock = threading.Lock()

    def label(self, shadow: Mapping[str, Any]) -> None:
        """The shadow labeller's hook: the LLM's answer to the champion's kept one."""
        if shadow.get("agrees") is None:  # the shadow call failed: no label
            return
        self.challenger.count(champion_labelled=1, champion_accepted_right=int(bool(shadow["agrees"])))
        with self._lock:
            self.llm_text, verdict = str(shadow["answer"]), self.verdict
        if verdict is not None:
            self.challenger.label(verdict, self.llm_text)

    def scored(self, verdict: Verdict) -> None:
        with self._lock:
            self.verdict, text = verdict, self.llm_text
        if text is not None:
            self.challenger.label(verdict, text)


class Challenger:
    """A query-level engine scoring live requests beside the champion, on WORKERS threads."""

    def __init__(self, engine: Engine, max_per_minute: int = 60, max_queued: int = MAX_QUEUED,
                 workers: int = WORKERS) -> None:
        if not isinstance(engine, Engine):
            raise BundleError(f"{engine.deployment.label} is decoded in process (a token-level bundle); a challenger "
                              "in shadow must be a query-level bundle, scored over its models' servers")
        self.engine, self.budget = engine, Sampler(1.0, max_per_minute)
        self.counts = Counts()
        self._lock = threading.Lock()
        self._work: WorkQueue[tuple[Pending, dict[Key, Any]]] = WorkQueue(self._handle, "challenger", workers,
                                                                         max_queued)

    def offer(self, question: str, answer: Answer, champion: Any) -> Callable[[Mapping[str, Any]], None] | None:
        """Queue the request for the challenger (never waits); the hook a shadow label of it should call,
        or None when the challenger will not score it."""
        if answer.fallback is not None or answer.served_by == IN_PROCESS:  # not the champion's router's route
            self.count(skipped=1)
            return None
        tap(champion)
        pending = Pending(self, question, answer)
        if not self._work.offer((pending, taped() if shares_slm(champion, self.engine) else {})):
            self.count(dropped=1)
            return None
        return pending.label

    def count(self, **added: int) -> None:
        with self._lock:
            for key, n in added.items():
                setattr(self.counts, key, getattr(self.counts, key) + n)

    def label(self, verdict: Verdict, llm_text: str) -> None:
        """A challenger's kept answer, graded against the LLM's."""
        if not verdict.escalated:
            self.count(challenger_labelled=1, challenger_accepted_right=int(agrees(llm_text, verdict.parsed_answer)))

    def snapshot(self) -> Counts:
        with self._lock:
            return replace(self.counts)

    def status(self) -> dict[str, Any]:
        d = self.engine.deployment
        return {"deployment": d.path, "label": d.label, "model": d.model_name, "version": d.version,
                "strategy": self.engine.strategy, "comparison": self.snapshot().to_dict()}

    def close(self, timeout_s: float = 10.0) -> None:
        """Drop what is queued, let the requests in flight finish, stop the workers, close the engine."""
        self._work.close(timeout_s=timeout_s)
        self.engine.close()

    def score(self, question: str, tape: Mapping[Key, list[list[Generation]]]) -> Verdict:
        """The challenger's route, score and kept answer for `question`, asking no LLM."""
        cascade = self.engine.cascade

        def generate(step: Generate) -> list[list[Generation]]:
            if step.role == "llm":  # the route is decided before the LLM is asked: nothing to pay for
                return [[Generation("", [], [])] for _ in step.prompts]
            reused = tape.get((tuple(step.prompts), step.params))
            if reused is not None:
                self.count(slm_reused=1)
                return reused
            if not self.budget.spend():
                raise Skipped("the challenger's SLM budget for this minute is spent")
            self.count(slm_generated=1)
            return cascade.slm.generate(step.prompts, step.params)

        row = drive(cascade.plan([question]), generate)[0]
        return Verdict(bool(row["escalated"]), float(row["score"]), None if row["escalated"] else row["parsed_answer"])

    def _handle(self, item: tuple[Pending, dict[Key, Any]]) -> None:
        pending, tape = item
        try:
            verdict = self.score(pending.question, tape)
        except Skipped:
            self.count(skipped=1)
            return
        except Exception as exc:  # a down server, a router's bug: counted, never the user's
            log.warning("challenger %s failed on a request: %s: %s", self.engine.deployment.label,
                        type(exc).__name__, exc)
            self.count(failed=1)
            return
        both_kept = not verdict.escalated and not pending.champion_escalated
        self.count(seen=1, routes_agree=int(verdict.escalated == pending.champion_escalated),
                   champion_escalated=int(pending.champion_escalated),
                   challenger_escalated=int(verdict.escalated), both_kept=int(both_kept),
                   answers_agree=int(both_kept and verdict.parsed_answer is not None
                                     and str(verdict.parsed_answer) == str(pending.champion_answer)))
        pending.scored(verdict)


GAUGES = ("route_agreement", "champion_escalation_rate", "challenger_escalation_rate", "answer_agreement",
          "champion_accept_accuracy", "challenger_accept_accuracy")


def register_gauges(registry: CollectorRegistry, current: Callable[[], Challenger | None]) -> None:
    """escalate_challenger_* gauges, read from whichever challenger is loaded when /metrics is scraped
    (NaN, and 0 requests, while none is)."""
    def figure(name: str) -> Callable[[], float]:
        def read() -> float:
            challenger = current()
            return challenger.snapshot().figures()[name] if challenger else math.nan
        return read

    for name in GAUGES:
        Gauge(f"escalate_challenger_{name}", f"champion vs the challenger in shadow, on the same requests: "
              f"{name.replace('_', ' ')} (NaN until there is one to compute)", registry=registry
              ).set_function(figure(name))
    seen = Gauge("escalate_challenger_requests", "requests the challenger in shadow scored, skipped, dropped or "
                 "failed on", ["outcome"], registry=registry)
    def count(outcome: str) -> Callable[[], float]:
        def read() -> float:
            challenger = current()
            return getattr(challenger.snapshot(), outcome) if challenger else 0
        return read

    for outcome in ("seen", "skipped", "dropped", "failed"):
        seen.labels(outcome).set_function(count(outcome))
