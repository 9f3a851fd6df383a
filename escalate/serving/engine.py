"""Answer one request with a deployed bundle: its cascade over HTTP backends, and what to do when a model is down.

`open_engine` picks the engine by whether the bundle's kind (escalate.kinds) needs model servers.
A query-level bundle does, and gets `Engine`: the bundle's `Cascade` with each self-hosted model
pointed at its vLLM server, so the gateway routes
exactly as evaluation scored (same prompts, router, threshold and cost model). When the SLM is
down, requests go straight to the LLM (and say so); when the LLM is down, the questions the SLM
keeps are still answered and the rest fail with ModelDown("llm"). Only a model that cannot answer
(no connection, a timeout, a 5xx) counts as down: a 4xx is that request's RequestRejected, and an
SLM answer without log-probabilities escalates that request alone (a NaN score escalates too).

Each server is asked for only the log-probabilities the router reads (Router.top_logprobs_needed: entropy
its top k, P(T) and the log-probability routers one); a deployment whose `logprobs` is "full" asks for all
the server gives, so served entropy equals evaluated entropy (the top-k error: bench/results/gateway_overhead.md).

`Engine.answer_async` (the gateway's path) awaits the servers on the event loop through each backend's
aiohttp pool, running the cascade's plan (escalate.cascade) there when the router is cheap to score, else
on a worker thread; `Engine.answer` runs the same plan blocking (the deploy probe, the shadow labeller).

Each request has a Budget: the SLM may use its share of the request's deadline, after which the
request escalates (a frozen SLM is bypassed like a dead one); the LLM may use what is left, after
which DeadlineExceeded.

A token-level bundle (CITER) needs none and gets `InProcessEngine`: its TokenLevelCascade decodes both models in
the gateway's own process (HF, torch), since a token router steps the two models token by token
and no vLLM server does that. There is no server to be down, so the fallbacks do not apply: a
failure is the gateway's own (500), and /admin/deploy refuses a bundle that does not load.
"""

from __future__ import annotations

import contextvars
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import anyio
import httpx
import numpy as np

from escalate.cascade import Cascade, Plan, drive, drive_async
from escalate.kinds import KINDS
from escalate.models.backends import openai_http
from escalate.models.backends.base import BackendError, Generation, GenerationBackend, SamplingParams
from escalate.prompts import format_prompt
from escalate.registry.bundle import BundleError, CascadeSpec, build_cascade
from escalate.routers.base import Router, RouterInputs
from escalate.sampling import generation_params
from escalate.serving.batcher import DecodeBatcher
from escalate.serving.deployment import Deployment

# After a connection failure, skip the SLM for this long instead of paying its retries on every request.
SLM_RETRY_AFTER_S = 5.0
# Readiness probes: each server's /health within this many seconds, remembered this long.
PROBE_TIMEOUT_S = 1.0
PROBE_CACHE_S = 2.0


class ModelDown(RuntimeError):
    """A model the request needs did not answer. The message says which, never where: `detail` (the
    backend's own words, with its URL) is for the gateway's log only."""

    def __init__(self, role: str, detail: str) -> None:
        super().__init__(f"the {role.upper()} is unavailable")
        self.role, self.detail = role, detail


class RequestRejected(RuntimeError):
    """A model's server refused this request (a 4xx, e.g. a prompt over its context): the request's
    problem, so the model is not marked down."""

    def __init__(self, role: str, status: int, detail: str) -> None:
        super().__init__(f"the {role.upper()} refused this request (HTTP {status} from its server); the "
                         "question may be too long for its context window")
        self.role, self.status, self.detail = role, status, detail


class Unscored(RuntimeError):
    """The SLM answered without log-probabilities: its answer cannot be scored, so the request escalates."""


class DeadlineExceeded(RuntimeError):
    """No model that could answer did so within the request's deadline."""


class NotReady(RuntimeError):
    """No deployment is loaded yet."""


@dataclass(frozen=True)
class Budget:
    """Until when (time.monotonic()) each model may take to answer one request."""

    slm_until: float
    llm_until: float

    @classmethod
    def start(cls, deadline_s: float, slm_share: float) -> Budget:
        now = time.monotonic()
        return cls(now + deadline_s * slm_share, now + deadline_s)

    @classmethod
    def unlimited(cls) -> Budget:
        return cls(math.inf, math.inf)


_BUDGET: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("engine_budget", default=None)


class _RoleBackend(GenerationBackend):
    """Holds a backend to its role's share of the request's budget, and sorts its failures: which model
    is down, which request was refused, which answer cannot be scored."""

    def __init__(self, inner: GenerationBackend, role: str) -> None:
        self.inner, self.role, self.name = inner, role, inner.name

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Generation]]:
        with self._sorted_failures():
            return self.inner.generate(prompts, params)

    async def agenerate(self, prompts: list[str], params: SamplingParams) -> list[list[Generation]]:
        with self._sorted_failures():
            return await self.inner.agenerate(prompts, params)

    @contextmanager
    def _sorted_failures(self) -> Iterator[None]:
        """Within the role's budget; a backend's failure becomes what it means for the request."""
        until = getattr(_BUDGET.get() or Budget.unlimited(), f"{self.role}_until")
        try:
            with openai_http.deadline(None if math.isinf(until) else until):
                yield
        except openai_http.BackendRejected as exc:
            raise RequestRejected(self.role, exc.status, str(exc)) from None
        except openai_http.BadCompletion as exc:
            if self.role == "slm":
                raise Unscored(str(exc)) from None
            raise ModelDown(self.role, str(exc)) from None
        except openai_http.BackendTimeout as exc:
            if self.role == "llm" and time.monotonic() >= until - 0.05:
                raise DeadlineExceeded(str(exc)) from None
            raise ModelDown(self.role, str(exc)) from None
        except BackendError as exc:
            raise ModelDown(self.role, str(exc)) from None

    def close(self) -> None:
        self.inner.close()


class LLMOnly(Router):
    """The fallback strategy while the SLM is down: a pre-generation rule that sends everything to the LLM."""

    name: ClassVar[str] = "llm_only"
    mode: ClassVar[str] = "pregen"
    top_logprobs_needed: ClassVar[int | None] = 0

    def score(self, inputs: RouterInputs) -> np.ndarray:
        return np.zeros(inputs.n_questions)  # below the fallback's threshold, +inf


LOGPROBS = ("strategy", "full")


def logprobs_asked(router: Router | None, role: str, limit: int, logprobs: str = "strategy") -> int:
    """Alternatives per token to ask `role`'s server for. Every one is parsed on every request (a full
    400-token vocabulary was most of the gateway's own time), so ask for what the router reads of the SLM
    (Router.top_logprobs_needed) and one from the LLM, whose log-probabilities nothing reads; at least one,
    since token counts and offsets come with them. "full" (or a router that does not say): the server's limit."""
    if logprobs not in LOGPROBS:
        raise BundleError(f"deployment logprobs must be one of {LOGPROBS}, got {logprobs!r}")
    need = None if router is None else (router.top_logprobs_needed if role == "slm" else 0)
    return limit if logprobs == "full" or need is None else max(1, min(need, limit))


def http_overrides(deployment: Deployment, router: Router | None = None) -> dict[str, dict[str, Any]]:
    """ModelConfig overrides that point each self-hosted model at its server, asking for the log-probabilities
    `router` reads (None: as many as the server gives)."""
    return {role: {"backend": "openai", "endpoint": url, "name": deployment.served_names.get(role, role),
                   "top_logprobs": logprobs_asked(router, role, deployment.top_logprobs.get(role, 5),
                                                  deployment.logprobs),
                   # The deployment's own key for its server, never the bundle's key for the model's usual endpoint.
                   "api_key_env": deployment.api_key_env.get(role)}
            for role, url in deployment.endpoints.items()}


def health_url(base_url: str) -> str:
    """vLLM's /health (not behind its API key) for an endpoint given as `http://host:port` or `.../v1`."""
    return base_url.rstrip("/").removesuffix("/v1") + "/health"


@dataclass
class Answer:
    """One served answer: the cascade's result fields plus why it was routed the way it was."""

    result: dict[str, Any]
    fallback: str | None  # "slm_down" when the SLM was skipped, "slm_unscored" when it gave no logprobs
    served_by: str  # the server name of the model that answered, or IN_PROCESS


IN_PROCESS = "in-process"
Bundle = tuple[CascadeSpec, Any, dict[str, str]]  # read_bundle's spec, router and checkpoint dirs


def open_engine(deployment: Deployment) -> Engine | InProcessEngine:
    """The engine for a deployment's bundle: over HTTP where its kind needs model servers, else in process."""
    bundle = deployment.read()
    return (Engine if KINDS[bundle[0].kind].needs_servers else InProcessEngine)(deployment, bundle)


class Engine:
    """One deployment whose kind needs model servers (query level), loaded: answers questions over its
    models' servers and reports who answered."""

    def __init__(self, deployment: Deployment, bundle: Bundle | None = None, cascade: Cascade | None = None) -> None:
        """`cascade`: one already built over HTTP backends (tests); by default the bundle's, pointed at the
        deployment's servers."""
        self.deployment = deployment
        if cascade is None:
            spec, router, checkpoints = bundle or deployment.read()
            kind = KINDS[spec.kind]
            if not kind.needs_servers:
                raise BundleError(f"{deployment.label} is a {kind.label} bundle; it is served in process (open_engine)")
            cascade = build_cascade(spec, checkpoints, router, http_overrides(deployment, router))
        self.strategy = cascade.router.name
        self.cascade = replace(cascade, slm=_RoleBackend(cascade.slm, "slm"), llm=_RoleBackend(cascade.llm, "llm"))
        self.fallback = replace(self.cascade, router=LLMOnly(), threshold=float("inf"))
        self._slm_down_until = 0.0
        self._lock = threading.Lock()
        self._probed: tuple[float, dict[str, bool]] = (-math.inf, {})

    def slm_skipped(self) -> bool:
        return time.monotonic() < self._slm_down_until

    def reachable(self) -> dict[str, bool]:
        """Whether each model's server answers /health now (a model without a server of ours, an API
        model, counts as reachable); probed with a short timeout and remembered for PROBE_CACHE_S."""
        at, known = self._probed
        if time.monotonic() - at < PROBE_CACHE_S:
            return known
        known = {role: self.deployment.endpoints.get(role) is None or _healthy(self.deployment.endpoints[role])
                 for role in ("slm", "llm")}
        self._probed = (time.monotonic(), known)
        return known

    def check(self) -> None:
        """One token from each model, straight from its server: ModelDown names the one that fails."""
        for backend in (self.cascade.slm, self.cascade.llm):
            backend.generate([format_prompt("1 + 1")], SamplingParams(max_new_tokens=1))

    def answer(self, question: str, budget: Budget | None = None) -> Answer:
        """Route one question within `budget`; raises ModelDown("llm") when it needs the LLM and the LLM is
        down, RequestRejected when a server refuses it, DeadlineExceeded when the LLM runs out of time."""
        token = _BUDGET.set(budget)
        try:
            return drive(self._route(question), self.cascade.generate)
        finally:
            _BUDGET.reset(token)

    async def answer_async(self, question: str, budget: Budget | None = None) -> Answer:
        """answer() on the event loop: the model servers are awaited, not waited on by a thread."""
        token = _BUDGET.set(budget)
        try:
            return await drive_async(self._route(question), self.cascade.agenerate, self.cascade.router.cheap_to_score)
        finally:
            _BUDGET.reset(token)

    def _route(self, question: str) -> Plan[Answer]:
        """The cascade's plan, and what to do when the SLM is down or cannot be scored."""
        reason = "slm_down"
        if not self.slm_skipped():
            try:
                return self._answer((yield from self.cascade.plan([question]))[0], None)
            except Unscored:
                reason = "slm_unscored"  # this answer alone: the SLM itself is up
            except ModelDown as exc:
                if exc.role != "slm":
                    raise
                with self._lock:
                    self._slm_down_until = time.monotonic() + SLM_RETRY_AFTER_S
        result = (yield from self.fallback.plan([question]))[0]
        if reason == "slm_unscored":  # no score: NaN, which escalates (decision.decide), not the fallback's 0
            result = {**result, "confidence": math.nan, "score": math.nan, "threshold": self.cascade.threshold}
        return self._answer(result, reason)

    def llm_text(self, question: str, budget: Budget | None = None) -> str:
        """The LLM's answer to `question`, prompted and generated as an escalated request's is: what a
        shadow label compares the SLM's kept answer with (escalate.serving.shadow)."""
        token = _BUDGET.set(budget)
        try:
            greedy, _ = generation_params(self.cascade.sampling, self.cascade.seed)
            return str(self.cascade.llm.generate([format_prompt(question)], greedy)[0][0].text).strip()
        finally:
            _BUDGET.reset(token)

    def close(self) -> None:
        self.cascade.close()

    def _answer(self, result: dict[str, Any], fallback: str | None) -> Answer:
        return Answer(result, fallback, self.deployment.served_names.get(result["model"], result["model"]))


class InProcessEngine:
    """One deployment whose kind needs no model server (token level), loaded in this process: the same
    surface as Engine, without servers.

    Concurrent requests decode together (escalate.serving.batcher.DecodeBatcher: one thread owns the
    models and steps every request in flight at once, up to the profile's sampling.batch_size), each
    to the answer it would get alone.
    """

    def __init__(self, deployment: Deployment, bundle: Bundle | None = None) -> None:
        self.deployment = deployment
        self.spec, router, checkpoints = bundle or deployment.read()
        self.cascade = build_cascade(self.spec, checkpoints, router)
        self.batcher = DecodeBatcher(self.cascade.decoder, self.cascade.max_new_tokens, self.cascade.decoder.batch_size)

    @property
    def strategy(self) -> str:
        return self.spec.strategy

    def slm_skipped(self) -> bool:
        return False  # no SLM server to bypass

    def reachable(self) -> dict[str, bool]:
        return {"slm": True, "llm": True}  # both models live in this process

    def check(self) -> None:
        """Nothing to reach: the models loaded with the engine, and the gateway's probe answer exercises them."""

    def answer(self, question: str, budget: Budget | None = None) -> Answer:
        """Decoding in process cannot be interrupted: the gateway's own deadline answers 504 meanwhile."""
        return Answer(self.cascade.answer([question], decode=self.batcher.generate)[0], None, IN_PROCESS)

    async def answer_async(self, question: str, budget: Budget | None = None) -> Answer:
        """answer() on a worker thread: decoding computes, and the event loop must not wait on it."""
        return await anyio.to_thread.run_sync(self.answer, question, budget)

    def close(self) -> None:
        """Stop the batcher's thread, then drop the models (the holder closes an engine once it is idle)."""
        self.batcher.close()
        self.cascade.close()


def _healthy(base_url: str) -> bool:
    try:
        return httpx.get(health_url(base_url), timeout=PROBE_TIMEOUT_S).status_code == 200
    except httpx.HTTPError:
        return False


class EngineHolder:
    """The gateway's current engine, swapped atomically; a retired engine closes when its last request ends."""

    def __init__(self) -> None:
        self._engine: Engine | None = None
        self._in_flight: dict[int, int] = {}
        self._retired: dict[int, Engine] = {}
        self._lock = threading.Lock()

    @property
    def engine(self) -> Engine | None:
        return self._engine

    @contextmanager
    def use(self) -> Iterator[Engine]:
        with self._lock:
            engine = self._engine
            if engine is None:
                raise NotReady("no deployment is loaded; run `escalate promote`")
            self._in_flight[id(engine)] = self._in_flight.get(id(engine), 0) + 1
        try:
            yield engine
        finally:
            with self._lock:
                self._in_flight[id(engine)] -= 1
                done = self._in_flight[id(engine)] == 0 and id(engine) in self._retired
                if done:
                    del self._retired[id(engine)], self._in_flight[id(engine)]
            if done:
                engine.close()

    def draining(self) -> list[tuple[Engine, int]]:
        """Retired engines still answering, each with its requests in flight (it closes when they reach 0)."""
        with self._lock:
            return [(engine, self._in_flight[key]) for key, engine in self._retired.items()]

    def swap(self, new: Engine | None) -> Engine | None:
        """Serve `new` (None: nothing, every request 503) from the next request on; requests in flight
        finish on the old one."""
        with self._lock:
            old, self._engine = self._engine, new
            idle = old is not None and self._in_flight.get(id(old), 0) == 0
            if old is not None and not idle:
                self._retired[id(old)] = old
        if idle:
            old.close()
        return old
