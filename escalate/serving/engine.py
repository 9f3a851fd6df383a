"""Answer one request with a deployed bundle: its cascade over HTTP backends, and what to do when a model is down.

`open_engine` picks the engine by whether the bundle's kind (escalate.kinds) needs model servers.
A query-level bundle does, and gets `Engine`: the bundle's `Cascade` with each self-hosted model
pointed at its vLLM server, so the gateway routes
exactly as evaluation scored (same prompts, router, threshold and cost model). When the SLM is
down, requests go straight to the LLM (and say so); when the LLM is down, the questions the SLM
keeps are still answered and the rest fail with ModelDown("llm").

A token-level bundle (CITER) needs none and gets `InProcessEngine`: its TokenLevelCascade decodes both models in
the gateway's own process (HF, torch), since a token router steps the two models token by token
and no vLLM server does that. There is no server to be down, so the fallbacks do not apply: a
failure is the gateway's own (500), and /admin/deploy refuses a bundle that does not load.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from escalate.kinds import KINDS
from escalate.models.backends.base import BackendError, Generation, GenerationBackend, SamplingParams
from escalate.prompts import format_prompt
from escalate.registry.bundle import BundleError, CascadeSpec, build_cascade
from escalate.routers.base import Router, RouterInputs
from escalate.serving.deployment import Deployment

# After a connection failure, skip the SLM for this long instead of paying its retries on every request.
SLM_RETRY_AFTER_S = 5.0


class ModelDown(RuntimeError):
    """A model the request needs did not answer."""

    def __init__(self, role: str, detail: str) -> None:
        super().__init__(f"the {role.upper()} is unavailable: {detail}")
        self.role, self.detail = role, detail


class NotReady(RuntimeError):
    """No deployment is loaded yet."""


class _RoleBackend(GenerationBackend):
    """Tags a backend's failures with its role, so the engine knows which model is down."""

    def __init__(self, inner: GenerationBackend, role: str) -> None:
        self.inner, self.role, self.name = inner, role, inner.name

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Generation]]:
        try:
            return self.inner.generate(prompts, params)
        except BackendError as exc:
            raise ModelDown(self.role, str(exc)) from None

    def close(self) -> None:
        self.inner.close()


class LLMOnly(Router):
    """The fallback strategy while the SLM is down: a pre-generation rule that sends everything to the LLM."""

    name: ClassVar[str] = "llm_only"
    mode: ClassVar[str] = "pregen"

    def score(self, inputs: RouterInputs) -> np.ndarray:
        return np.zeros(len(inputs.questions))  # below the fallback's threshold, +inf


def http_overrides(deployment: Deployment) -> dict[str, dict[str, Any]]:
    """ModelConfig overrides that point each self-hosted model at its server."""
    return {role: {"backend": "openai", "endpoint": url, "name": deployment.served_names.get(role, role),
                   "top_logprobs": deployment.top_logprobs.get(role, 5)}
            for role, url in deployment.endpoints.items()}


@dataclass
class Answer:
    """One served answer: the cascade's result fields plus why it was routed the way it was."""

    result: dict[str, Any]
    fallback: str | None  # "slm_down" when the SLM was skipped, else None
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

    def __init__(self, deployment: Deployment, bundle: Bundle | None = None) -> None:
        self.deployment = deployment
        spec, router, checkpoints = bundle or deployment.read()
        kind = KINDS[spec.kind]
        if not kind.needs_servers:
            raise BundleError(f"{deployment.label} is a {kind.label} bundle; it is served in process (open_engine)")
        self.spec = spec
        cascade = build_cascade(spec, checkpoints, router, http_overrides(deployment))
        self.cascade = replace(cascade, slm=_RoleBackend(cascade.slm, "slm"), llm=_RoleBackend(cascade.llm, "llm"))
        self.fallback = replace(self.cascade, router=LLMOnly(), threshold=float("inf"))
        self._slm_down_until = 0.0
        self._lock = threading.Lock()

    @property
    def strategy(self) -> str:
        return self.spec.strategy

    def slm_skipped(self) -> bool:
        return time.monotonic() < self._slm_down_until

    def check(self) -> None:
        """One token from each model, straight from its server: ModelDown names the one that fails."""
        for backend in (self.cascade.slm, self.cascade.llm):
            backend.generate([format_prompt("1 + 1")], SamplingParams(max_new_tokens=1))

    def answer(self, question: str) -> Answer:
        """Route one question; raises ModelDown("llm") when it needs the LLM and the LLM is down."""
        if not self.slm_skipped():
            try:
                return self._answer(self.cascade.answer([question])[0], None)
            except ModelDown as exc:
                if exc.role != "slm":
                    raise
                with self._lock:
                    self._slm_down_until = time.monotonic() + SLM_RETRY_AFTER_S
        return self._answer(self.fallback.answer([question])[0], "slm_down")

    def close(self) -> None:
        self.cascade.close()

    def _answer(self, result: dict[str, Any], fallback: str | None) -> Answer:
        return Answer(result, fallback, self.deployment.served_names.get(result["model"], result["model"]))


class InProcessEngine:
    """One deployment whose kind needs no model server (token level), loaded in this process: the same
    surface as Engine, without servers.

    Requests decode one at a time: torch already spreads one decode over the cores, and concurrent
    decodes on shared CPU cores would only make each slower.
    """

    def __init__(self, deployment: Deployment, bundle: Bundle | None = None) -> None:
        self.deployment = deployment
        self.spec, router, checkpoints = bundle or deployment.read()
        self.cascade = build_cascade(self.spec, checkpoints, router)
        self._lock = threading.Lock()

    @property
    def strategy(self) -> str:
        return self.spec.strategy

    def slm_skipped(self) -> bool:
        return False  # no SLM server to bypass

    def check(self) -> None:
        """Nothing to reach: the models loaded with the engine, and the gateway's probe answer exercises them."""

    def answer(self, question: str) -> Answer:
        with self._lock:
            return Answer(self.cascade.answer([question])[0], None, IN_PROCESS)

    def close(self) -> None:
        with self._lock:
            self.cascade.close()


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

    def swap(self, new: Engine) -> Engine | None:
        """Serve `new` from the next request on; requests in flight finish on the old one."""
        with self._lock:
            old, self._engine = self._engine, new
            idle = old is not None and self._in_flight.get(id(old), 0) == 0
            if old is not None and not idle:
                self._retired[id(old)] = old
        if idle:
            old.close()
        return old
