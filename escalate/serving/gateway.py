"""The OpenAI-compatible gateway: applies a deployed bundle's strategy and says who answered.

    escalate serve --port 8000            # then: openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=...)

Every completion carries an `escalate` object: the model that answered, the router's confidence,
the strategy, each model's tokens and cost, and each step's latency. Errors use OpenAI's body
shape, and none quotes an exception or an internal URL (the log has those): 401 without a valid
key, 400 for malformed JSON or an unanswerable request (one a model's server refused, e.g. over its
context), 408 for a body sent too slowly, 422 for schema violations, 404 for an unknown model or
path, 413 for oversized bodies, 429 when the queue is full, 503 when the model a request needs is
down (a down or frozen SLM is bypassed: its requests go to the LLM), 504 past the request's
deadline; 429 and 503 say Retry-After.
A query-level request is answered on the event loop (Engine.answer_async: no worker thread waits on a
model server); at most max_concurrency answer at once and max_queue wait for a place.
A token-level (CITER) deployment decodes in this process, on worker threads: `served_by` says "in-process", and the
model-down handling does not apply (engine.InProcessEngine).

Auth: /v1/* takes a client key ($ESCALATE_API_KEY). `POST /admin/deploy` takes an admin key
($ESCALATE_ADMIN_KEY) and is absent (404) without one; it loads a deployment from the serving
directory only, answers a probe question with it, and only then swaps it in; requests in flight
finish on the bundle they started with. `POST /admin/undeploy` serves nothing again (503s), and
`GET /admin/status` says what is served and how many requests each replaced deployment still has
in flight, so promote stops a deployment's servers only once they are drained. /metrics answers
loopback clients, and others with a metrics key ($ESCALATE_METRICS_KEY). /health and /ready are
open; /docs and /openapi.json are off unless `docs` is set.

With `shadow_fraction` set, that share of the answers the SLM kept is also asked of the LLM on
background threads, within `shadow_max_per_minute` (escalate.serving.shadow): the response never waits
on it, and the request's traffic row carries the label.

`POST /admin/challenger` loads a second (query-level) deployment beside the served one, which scores each
answered request off the user's path (escalate.serving.challenger); /admin/status and /metrics say how the
two compare, and `DELETE /admin/challenger` unloads it, answering the final comparison.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from escalate.registry.bundle import DEFAULT_EXAMPLE, BundleError
from escalate.serving import openai_api as api
from escalate.serving.challenger import Challenger, register_gauges, tap
from escalate.serving.deployment import SERVING_DIR, Deployment
from escalate.serving.engine import (
    SLM_RETRY_AFTER_S,
    Answer,
    Budget,
    DeadlineExceeded,
    Engine,
    EngineHolder,
    InProcessEngine,
    ModelDown,
    NotReady,
    RequestRejected,
    open_engine,
)
from escalate.serving.metrics import GatewayMetrics
from escalate.serving.shadow import Job, Sampler, Shadow, calib_figures, shadowable
from escalate.serving.traffic import open_traffic_log, redact

log = logging.getLogger("escalate.gateway")
API_KEY_ENV = "ESCALATE_API_KEY"
ADMIN_KEY_ENV = "ESCALATE_ADMIN_KEY"
METRICS_KEY_ENV = "ESCALATE_METRICS_KEY"
LOOPBACK = ("127.0.0.1", "::1", "localhost")
# Past the request's deadline the engine gives up on its own; this much later the gateway answers 504 anyway.
DEADLINE_GRACE_S = 1.0
T = TypeVar("T")


@dataclass(frozen=True)
class GatewaySettings:
    """Limits and keys; every field has a CLI flag on `escalate serve`."""

    api_keys: tuple[str, ...]
    max_body_bytes: int = 64_000
    max_concurrency: int = 64  # requests answered at once (awaiting their models, or decoding in process)
    max_queue: int = 64  # requests waiting for a worker before new ones get 429
    admin_keys: tuple[str, ...] = ()  # none: /admin/deploy does not exist
    metrics_keys: tuple[str, ...] = ()  # besides loopback clients, who may read /metrics
    serving_dir: str = SERVING_DIR  # the only directory /admin/deploy loads deployments from
    deadline_s: float = 30.0  # a request's whole time, queue included; then 504
    slm_share: float = 0.5  # of the deadline, the SLM's; past it the request escalates
    body_timeout_s: float = 10.0  # time to send the request body; then 408
    docs: bool = False  # serve /docs and /openapi.json
    traffic_dir: str | None = None  # where answered exchanges are logged (serving.traffic); None: not logged
    traffic_flush_s: float = 1.0  # the traffic log writes a part file this often: at most this much is lost
    traffic_retention_days: int = 30  # traffic partitions older than this are deleted
    traffic_redact: Callable[[str], str] = redact  # applied to each question before it is written
    shadow_fraction: float = 0.0  # of the answers the SLM kept, the share also asked of the LLM (serving.shadow)
    shadow_max_per_minute: int = 60  # the most shadow calls in any minute; more are dropped and counted

    def __post_init__(self) -> None:
        if not self.api_keys or not all(self.api_keys):
            raise ValueError(f"the gateway needs an API key: set ${API_KEY_ENV}")
        if self.max_body_bytes < 1024 or self.max_concurrency < 1 or self.max_queue < 0:
            raise ValueError("max_body_bytes >= 1024, max_concurrency >= 1 and max_queue >= 0 are required")
        if not all(self.admin_keys) or not all(self.metrics_keys) or set(self.admin_keys) & set(self.api_keys):
            raise ValueError("admin and metrics keys must be non-empty, and no admin key may be a client key")
        if not (self.deadline_s > 0 and 0 < self.slm_share < 1 and self.body_timeout_s > 0):
            raise ValueError("deadline_s > 0, 0 < slm_share < 1 and body_timeout_s > 0 are required")
        if not (self.traffic_flush_s > 0 and self.traffic_retention_days >= 1):
            raise ValueError("traffic_flush_s > 0 and traffic_retention_days >= 1 are required")
        if not (0 <= self.shadow_fraction <= 1 and self.shadow_max_per_minute >= 1):
            raise ValueError("--shadow-fraction must be in [0, 1] and --shadow-max-per-minute >= 1")


class APIError(Exception):
    def __init__(self, status: int, message: str, kind: str, code: str | None = None, param: str | None = None,
                 retry_after_s: float | None = None):
        super().__init__(message)
        self.status, self.body = status, api.error_body(message, kind, code, param)
        self.headers = {"Retry-After": str(math.ceil(retry_after_s))} if retry_after_s is not None else None


class DeployRequest(BaseModel):
    deployment: str = Field(max_length=4096)  # path of a deployment.json (or its directory) in the serving dir
    probe: str = Field(default=DEFAULT_EXAMPLE, min_length=1, max_length=api.MAX_QUESTION_CHARS)


class ChallengerRequest(BaseModel):
    deployment: str = Field(max_length=4096)  # as DeployRequest's: a deployment in the serving dir
    max_per_minute: int = Field(default=60, ge=1)  # SLM calls of its own (not the champion's, reused) a minute


def key_matches(header: str, keys: tuple[str, ...]) -> bool:
    """Whether an Authorization header carries one of `keys`. Bytes, not str: a non-ASCII header must
    be a plain mismatch (401), and compare_digest refuses non-ASCII str."""
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    raw = given.strip().encode("latin-1", "replace")  # how Starlette decoded the header's bytes
    return any([hmac.compare_digest(raw, key.encode()) for key in keys])  # a list: every key is compared


def fingerprint(header: str) -> str:
    """Who sent an admin request, for the log, without writing the key."""
    return hashlib.sha256(header.encode("latin-1", "replace")).hexdigest()[:12]


class BodyLimit:
    """ASGI middleware: 413 for a body over the limit, whether or not Content-Length is sent; 408 for a
    body not sent within timeout_s, so a slow sender cannot hold a connection open."""

    def __init__(self, app: Any, max_bytes: int, timeout_s: float) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._reject(send, 413 if length.isdigit() else 400)
            return
        body, more = b"", True
        with anyio.move_on_after(self.timeout_s) as slow:
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > self.max_bytes:
                    await self._reject(send, 413)
                    return
        if slow.cancelled_caught:
            await self._reject(send, 408)
            return
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send: Any, status: int) -> None:
        message, code = {413: (f"request body over {self.max_bytes} bytes", "request_too_large"),
                         408: (f"request body not received within {self.timeout_s:g} s", "request_timeout"),
                         400: ("invalid Content-Length header", "bad_request")}[status]
        payload = json.dumps(api.error_body(message, "invalid_request_error", code)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})


class Gateway:
    """The state behind the app: the engine holder, the worker limiter, the metrics, the traffic log and
    the shadow labeller."""

    def __init__(self, settings: GatewaySettings, holder: EngineHolder | None = None) -> None:
        self.settings = settings
        self.holder = holder or EngineHolder()
        self.metrics = GatewayMetrics()
        self.traffic = open_traffic_log(settings.traffic_dir, settings.traffic_flush_s,
                                        settings.traffic_retention_days, settings.traffic_redact)
        self.limiter = anyio.CapacityLimiter(settings.max_concurrency)
        self.admitted = 0  # requests answering or waiting for a worker
        self.shadow = Shadow(Sampler(settings.shadow_fraction, settings.shadow_max_per_minute), self.shadow_ask,
                             self.traffic.log, lambda outcome: self.metrics.shadow_requests.labels(outcome).inc(),
                             self.metrics.acceptance)
        self.challenger: Challenger | None = None  # a second deployment scoring requests in shadow
        register_gauges(self.metrics.registry, lambda: self.challenger)

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Await `fn(*args)` once one of max_concurrency places is free; 429 once max_concurrency answer and
        max_queue wait; 504 past the deadline. Cancelling the caller (its client left) frees its place at once."""
        capacity = self.settings.max_concurrency + self.settings.max_queue
        if self.admitted >= capacity:
            raise APIError(429, f"the gateway is at capacity ({self.settings.max_concurrency} answering, "
                                f"{self.settings.max_queue} waiting); retry shortly", "rate_limit_error", "queue_full",
                           retry_after_s=1)
        self.admitted += 1
        self.metrics.in_flight.inc()
        try:
            with anyio.move_on_after(self.settings.deadline_s + DEADLINE_GRACE_S):
                async with self.limiter:
                    return await fn(*args)
            raise DeadlineExceeded("the gateway's deadline passed")
        finally:
            self.admitted -= 1
            self.metrics.in_flight.dec()

    async def answer(self, question: str, budget: Budget) -> tuple[Answer, Deployment]:
        """On the event loop where the engine awaits model servers; an in-process engine computes, so it
        answers on a worker thread, which holds the engine until it is done (an abandoned request's thread,
        past the deadline, finishes on the engine it started with and stops at its own budget)."""
        if isinstance(self.holder.engine, InProcessEngine):
            return await anyio.to_thread.run_sync(self.answer_blocking, question, budget, abandon_on_cancel=True)
        with self.holder.use() as engine:
            return await engine.answer_async(question, budget), engine.deployment

    def answer_blocking(self, question: str, budget: Budget) -> tuple[Answer, Deployment]:
        with self.holder.use() as engine:
            return engine.answer(question, budget), engine.deployment

    def shadow_ask(self, question: str) -> str:
        """The served LLM's answer to a kept question (a shadow call, on a shadow worker), within the deadline."""
        with self.holder.use() as engine:
            return engine.llm_text(question, Budget.start(self.settings.deadline_s, self.settings.slm_share))

    def close(self) -> None:
        """Finish the queued shadow calls (they log their rows), then flush the traffic log."""
        self.stop_challenger()
        self.shadow.close()
        self.traffic.close()

    def deploy(self, deployment: Deployment, probe_question: str = DEFAULT_EXAMPLE) -> dict[str, Any]:
        engine = open_engine(deployment)
        try:
            engine.check()
            probe = engine.answer(probe_question)
        except Exception:
            engine.close()
            raise
        if probe.fallback:
            engine.close()
            raise ModelDown("slm", f"the new deployment's SLM at {deployment.endpoints.get('slm')} did not answer")
        return {**self._swap(engine), "probe": {"answer": probe.result["answer"], "model": probe.result["model"]}}

    def undeploy(self) -> dict[str, Any]:
        """Serve nothing (503 until the next deploy): a failed first promotion's way back."""
        return self._swap(None)

    def _swap(self, engine: Engine | InProcessEngine | None) -> dict[str, Any]:
        old = self.holder.swap(engine)
        self.metrics.set_calib(_calib(engine) if engine else {})
        left = dict((id(e), n) for e, n in self.holder.draining()).get(id(old), 0)
        return {"serving": engine.deployment.label if engine else None,
                "previous": old.deployment.label if old else None, "previous_in_flight": left}

    def status(self) -> dict[str, Any]:
        """What is served, and what still drains: promote retires a deployment's servers once it is gone
        from `draining`, which takes at most `drain_s` (an abandoned request stops at its own budget)."""
        engine = self.holder.engine
        return {"serving": _described(engine.deployment) if engine else None,
                "draining": [{**_described(e.deployment), "in_flight": n} for e, n in self.holder.draining()],
                "drain_s": self.settings.deadline_s + DEADLINE_GRACE_S,
                "challenger": self.challenger.status() if self.challenger else None}

    def compare(self, question: str, answer: Answer, deployment: Deployment) -> Any:
        """Offer an answered request to the challenger, if one is loaded; the hook for its shadow label."""
        if self.challenger is None:
            return None
        engine = self.holder.engine
        return self.challenger.offer(question, answer, engine if engine and engine.deployment is deployment else None)

    def admin_challenger(self, request: ChallengerRequest) -> dict[str, Any]:
        """Load a challenger from the serving directory (replacing one loaded before), once its models answer."""
        engine = open_engine(Deployment.load_within(request.deployment, Path(self.settings.serving_dir)))
        try:
            engine.check()
            challenger = Challenger(engine, request.max_per_minute)
        except Exception:
            engine.close()
            raise
        return {"challenger": challenger.status(), "previous": self.set_challenger(challenger)}

    def set_challenger(self, challenger: Challenger) -> dict[str, Any] | None:
        """Score requests with `challenger` from the next one on; the final status of the one it replaces."""
        tap(self.holder.engine)  # the champion records its SLM generations for it from now on
        previous = self.stop_challenger()
        self.challenger = challenger
        return previous

    def stop_challenger(self) -> dict[str, Any] | None:
        """Unload the challenger; its final status (None when none was loaded)."""
        challenger, self.challenger = self.challenger, None
        if challenger is None:
            return None
        challenger.close()
        return challenger.status()

    def admin_deploy(self, request: DeployRequest) -> dict[str, Any]:
        """A deployment a client named: from the serving directory only."""
        return self.deploy(Deployment.load_within(request.deployment, Path(self.settings.serving_dir)), request.probe)


def create_app(settings: GatewaySettings, holder: EngineHolder | None = None) -> FastAPI:
    gateway = Gateway(settings, holder)
    docs = {} if settings.docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="escalate gateway", version="1", description=__doc__, on_shutdown=[gateway.close],
                  **docs)
    app.state.gateway = gateway
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)

    # Dependencies are async: FastAPI runs a plain def on a worker thread, a hop per request for a string compare.
    async def authorize(request: Request) -> None:
        if not key_matches(request.headers.get("authorization", ""), settings.api_keys):
            raise APIError(401, "missing or invalid API key: send 'Authorization: Bearer <key>' with the key in "
                                f"${API_KEY_ENV}", "invalid_request_error", "invalid_api_key")

    async def authorize_admin(request: Request) -> None:
        if not settings.admin_keys:  # off: as if the route did not exist
            raise APIError(404, f"no route {request.url.path}", "not_found_error")
        if not key_matches(request.headers.get("authorization", ""), settings.admin_keys):
            log.warning("admin: refused %s %s from %s (bad key %s)", request.method, request.url.path,
                        request.client.host if request.client else "?", fingerprint(request.headers.get("authorization", "")))
            raise APIError(401, f"missing or invalid admin key (${ADMIN_KEY_ENV})", "invalid_request_error",
                           "invalid_api_key")

    async def authorize_metrics(request: Request) -> None:
        loopback = request.client is not None and request.client.host in LOOPBACK
        if not loopback and not key_matches(request.headers.get("authorization", ""), settings.metrics_keys):
            raise APIError(403, f"/metrics answers loopback clients, or a metrics key (${METRICS_KEY_ENV})",
                           "permission_error", "forbidden")

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        gateway.metrics.requests.labels(_route(request, exc.status), str(exc.status)).inc()
        return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """FastAPI's own refusals (unknown path, wrong method, undecodable body) in OpenAI's error shape."""
        gateway.metrics.requests.labels(_route(request, exc.status_code), str(exc.status_code)).inc()
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(api.error_body(str(exc.detail), kind), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        """The log has the exception; the client gets no internals."""
        log.exception("unexpected error on %s", request.url.path)
        gateway.metrics.requests.labels(_route(request, 500), "500").inc()
        return JSONResponse(api.error_body("internal error; the gateway's log has the details", "server_error"),
                            status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        malformed = any(e.get("type") == "json_invalid" for e in errors)
        status = 400 if malformed else 422
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = "request body is not valid JSON" if malformed else (
            f"{where or 'body'}: {first.get('msg', 'invalid')}" + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""))
        gateway.metrics.requests.labels(_route(request, status), str(status)).inc()
        return JSONResponse(api.error_body(message, "invalid_request_error", "invalid_request", where or None),
                            status_code=status)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """Ready while some model of the deployment answers its server's /health (probed, cached briefly):
        with the SLM alone, its questions are answered; with the LLM alone, all of them."""
        engine = gateway.holder.engine
        if engine is None:
            return JSONResponse({"ready": False, "reason": "no deployment loaded"}, status_code=503)
        reachable = await anyio.to_thread.run_sync(engine.reachable)
        body = {"ready": any(reachable.values()), "deployment": engine.deployment.label, "strategy": engine.strategy,
                "reachable": reachable, "slm_bypassed": engine.slm_skipped() or not reachable["slm"]}
        if not body["ready"]:
            return JSONResponse({**body, "reason": "no model is reachable"}, status_code=503,
                                headers={"Retry-After": str(math.ceil(SLM_RETRY_AFTER_S))})
        return JSONResponse(body)

    @app.get("/metrics", dependencies=[Depends(authorize_metrics)])
    async def metrics() -> Response:
        return Response(gateway.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models() -> dict[str, Any]:
        engine = gateway.holder.engine
        data = [] if engine is None else [{"id": engine.deployment.model_name, "object": "model",
                                           "created": 0, "owned_by": "escalate"}]
        return {"object": "list", "data": data}

    async def complete(request: Any, raw: Request, chat: bool, route: str) -> Response:
        start = time.perf_counter()
        budget = Budget.start(settings.deadline_s, settings.slm_share)  # the queue's wait counts too
        refused = request.unsupported()
        if refused is not None:
            raise APIError(400, f"{refused[0]} is not supported: {refused[1]}", "invalid_request_error",
                           "unsupported_parameter", refused[0])
        try:
            question = request.question()
        except ValueError as exc:
            raise APIError(400, str(exc), "invalid_request_error", "invalid_request",
                           "messages" if chat else "prompt") from None
        engine = gateway.holder.engine
        if engine is not None and request.model not in (engine.deployment.model_name, "escalate"):
            raise APIError(404, f"model {request.model!r} is not served here; GET /v1/models lists "
                                f"{engine.deployment.model_name!r}", "invalid_request_error", "model_not_found", "model")
        try:
            answered = await _unless_disconnected(raw, gateway.answer, question, budget)
        except NotReady as exc:
            raise APIError(503, str(exc), "service_unavailable", "not_ready", retry_after_s=5) from None
        except ModelDown as exc:
            log.warning("%s: %s", exc, exc.detail)
            gateway.metrics.model_errors.labels(exc.role).inc()
            raise APIError(503, f"{exc}; the question needed it, so it was not answered", "service_unavailable",
                           f"{exc.role}_unavailable", retry_after_s=SLM_RETRY_AFTER_S) from None
        except RequestRejected as exc:
            log.info("%s: %s", exc, exc.detail)
            raise APIError(400, str(exc), "invalid_request_error", "model_rejected_request", "messages") from None
        except DeadlineExceeded as exc:
            log.warning("deadline: %s", exc)
            raise APIError(504, f"no answer within the request's deadline of {settings.deadline_s:g} s",
                           "timeout_error", "deadline_exceeded") from None
        if answered is None:  # the client left: nobody to answer
            gateway.metrics.requests.labels(route, "499").inc()
            return Response(status_code=499)
        answer, deployment = answered
        result = answer.result
        if answer.fallback == "slm_down":
            gateway.metrics.model_errors.labels("slm").inc()
        gateway.metrics.observe_answer(result, answer.fallback)
        limit = request.token_limit()
        text, finish = api.truncate(result["answer"], limit)
        cut = limit if finish == "length" else None
        meta = escalate_object(answer, deployment, time.perf_counter() - start)
        headers = api.route_headers(meta)
        job = Job(question, result, meta, raw.headers, time.time(), gateway.compare(question, answer, deployment))
        if not gateway.shadow.offer(job, shadowable(result, answer.fallback, answer.served_by)):
            gateway.traffic.log(question, result, meta, raw.headers)  # else the shadow worker logs it, labelled
        gateway.metrics.latency.labels(route).observe(time.perf_counter() - start)
        gateway.metrics.requests.labels(route, "200").inc()
        if request.stream:
            chunks = api.stream_chunks(chat, request.model, text, finish, result, meta, cut)
            return StreamingResponse(_sse(chunks), media_type="text/event-stream", headers=headers)
        build = api.chat_body if chat else api.text_body
        return JSONResponse(build(request.model, text, finish, result, meta, cut), headers=headers)

    async def _unless_disconnected(raw: Request, fn: Any, *args: Any) -> Any:
        """gateway.run(fn, *args), or None as soon as the client disconnects (cancelling frees its place).

        One watcher task beside the request's own, which it cancels (an anyio task group of two cost a
        third of the gateway's own CPU per request). The cancellation always lands on the await below:
        the watcher runs only while this task waits there."""
        work, left = asyncio.current_task(), False

        async def watch() -> None:
            nonlocal left
            while (await raw.receive())["type"] != "http.disconnect":
                pass
            left = True
            work.cancel()

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            return await gateway.run(fn, *args)
        except asyncio.CancelledError:
            if not left:
                raise
            work.uncancel()
            return None
        finally:
            watcher.cancel()

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat_completions(request: api.ChatCompletionRequest, raw: Request) -> Response:
        return await complete(request, raw, True, "/v1/chat/completions")

    @app.post("/v1/completions", dependencies=[Depends(authorize)])
    async def completions(request: api.CompletionRequest, raw: Request) -> Response:
        return await complete(request, raw, False, "/v1/completions")

    @app.post("/admin/deploy", dependencies=[Depends(authorize_admin)])
    async def deploy(request: DeployRequest, raw: Request) -> dict[str, Any]:
        who = (f"key {fingerprint(raw.headers.get('authorization', ''))} from "
               f"{raw.client.host if raw.client else '?'}")
        try:
            result = await anyio.to_thread.run_sync(gateway.admin_deploy, request)
        except (BundleError, ModelDown, RequestRejected, DeadlineExceeded) as exc:
            log.warning("admin: deploy of %r by %s refused: %s %s", request.deployment, who, exc,
                        getattr(exc, "detail", ""))
            raise APIError(409, f"deployment refused, still serving the previous one: {exc}",
                           "invalid_request_error", "deployment_refused") from None
        log.warning("admin: deploy of %r by %s: now serving %s", request.deployment, who, result["serving"])
        return result

    @app.post("/admin/undeploy", dependencies=[Depends(authorize_admin)])
    async def undeploy(raw: Request) -> dict[str, Any]:
        result = gateway.undeploy()
        log.warning("admin: undeploy by key %s: serving nothing (was %s)",
                    fingerprint(raw.headers.get("authorization", "")), result["previous"])
        return result

    @app.post("/admin/challenger", dependencies=[Depends(authorize_admin)])
    async def challenger(request: ChallengerRequest, raw: Request) -> dict[str, Any]:
        who = fingerprint(raw.headers.get("authorization", ""))
        try:
            result = await anyio.to_thread.run_sync(gateway.admin_challenger, request)
        except (BundleError, ModelDown, RequestRejected, DeadlineExceeded) as exc:
            log.warning("admin: challenger %r by key %s refused: %s %s", request.deployment, who, exc,
                        getattr(exc, "detail", ""))
            raise APIError(409, f"challenger refused: {exc}", "invalid_request_error", "challenger_refused") from None
        log.warning("admin: challenger %s loaded in shadow by key %s", result["challenger"]["label"], who)
        return result

    @app.delete("/admin/challenger", dependencies=[Depends(authorize_admin)])
    async def challenger_stop(raw: Request) -> dict[str, Any]:
        final = await anyio.to_thread.run_sync(gateway.stop_challenger)
        log.warning("admin: challenger unloaded by key %s: %s", fingerprint(raw.headers.get("authorization", "")),
                    final and final["label"])
        return {"stopped": final}

    @app.get("/admin/status", dependencies=[Depends(authorize_admin)])
    async def status() -> dict[str, Any]:
        return gateway.status()

    return app


def _described(deployment: Deployment) -> dict[str, str]:
    return {"deployment": deployment.path, "label": deployment.label}


def _calib(engine: Engine | InProcessEngine) -> dict[str, float]:
    """What calib predicted for the engine's deployment, from its bundle's evaluation ({} if it has none)."""
    try:
        eval_dir = engine.deployment.artifacts().get("eval")
    except BundleError:  # a deployment without a readable bundle (tests' stand-ins): no prediction to show
        return {}
    return calib_figures(eval_dir, engine.strategy)


def _route(request: Request, status: int) -> str:
    """The metrics label: the path, except for unknown paths (404s), which would make labels without end."""
    return "other" if status == 404 else request.url.path


def escalate_object(answer: Answer, deployment: Deployment, gateway_s: float) -> dict[str, Any]:
    """What every response says about how it was answered."""
    result = answer.result
    return {
        "model": result["model"], "served_by": answer.served_by, "escalated": result["escalated"],
        "fallback": answer.fallback, "confidence": _finite(result["confidence"]), "score": _finite(result["score"]),
        "strategy": result["strategy"],
        "threshold": _finite(result["threshold"]), "parsed_answer": result["parsed_answer"],
        "deployment": {"model": deployment.model_name, "version": deployment.version, "alias": deployment.alias},
        "tokens": {r: {"prompt": int(result[f"{r}_prompt_tokens"]), "output": int(result[f"{r}_output_tokens"])}
                   for r in ("slm", "llm")},
        "cost": {"slm": result["cost_slm"], "llm": result["cost_llm"], "router": result["cost_router"],
                 "total": result["cost"]},
        "latency_s": {"slm": result["latency_slm_s"], "router": result["latency_router_s"],
                      "llm": result["latency_llm_s"], "gateway": gateway_s},
    }


def _finite(value: float) -> float | None:
    """JSON has no inf or NaN: an always/never-escalate threshold or a missing score becomes null."""
    return float(value) if math.isfinite(float(value)) else None


async def _sse(chunks: list[dict[str, Any]]) -> Any:
    for chunk in chunks:
        yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"


def load_current(app: FastAPI, deployment_path: Path) -> dict[str, Any]:
    """Load a deployment at start-up (the operator's own path: any directory; the same probe as /admin/deploy)."""
    return app.state.gateway.deploy(Deployment.load(deployment_path))
