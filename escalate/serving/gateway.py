"""The OpenAI-compatible gateway: applies a deployed bundle's strategy and says who answered.

    escalate serve --port 8000            # then: openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=...)

Every completion carries an `escalate` object: the model that answered, the router's confidence,
the strategy, each model's tokens and cost, and each step's latency. Errors use OpenAI's body
shape: 401 without a valid key, 400 for malformed JSON or an unanswerable request, 422 for schema
violations, 404 for an unknown model, 413 for oversized bodies, 429 when the queue is full, 503
when the model a request needs is down (a down SLM is bypassed: its requests go to the LLM).
A token-level (CITER) deployment decodes in this process: `served_by` says "in-process", and the
model-down handling does not apply (engine.InProcessEngine).
`POST /admin/deploy` loads a deployment, answers a probe question with it, and only then swaps it
in; requests in flight finish on the bundle they started with.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from escalate.registry.bundle import DEFAULT_EXAMPLE, BundleError
from escalate.serving import openai_api as api
from escalate.serving.deployment import Deployment
from escalate.serving.engine import Answer, EngineHolder, ModelDown, NotReady, open_engine
from escalate.serving.metrics import GatewayMetrics

log = logging.getLogger("escalate.gateway")
API_KEY_ENV = "ESCALATE_API_KEY"


@dataclass(frozen=True)
class GatewaySettings:
    """Limits and keys; every field has a CLI flag on `escalate serve`."""

    api_keys: tuple[str, ...]
    max_body_bytes: int = 64_000
    max_concurrency: int = 8  # requests answered at once (worker threads)
    max_queue: int = 64  # requests waiting for a worker before new ones get 429

    def __post_init__(self) -> None:
        if not self.api_keys or not all(self.api_keys):
            raise ValueError(f"the gateway needs an API key: set ${API_KEY_ENV}")
        if self.max_body_bytes < 1024 or self.max_concurrency < 1 or self.max_queue < 0:
            raise ValueError("max_body_bytes >= 1024, max_concurrency >= 1 and max_queue >= 0 are required")


class APIError(Exception):
    def __init__(self, status: int, message: str, kind: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.body = status, api.error_body(message, kind, code, param)


class DeployRequest(BaseModel):
    deployment: str  # path of a deployment.json (or its directory)
    probe: str = DEFAULT_EXAMPLE  # answered by the new bundle (after each model's own check) before the swap


class BodyLimit:
    """ASGI middleware: 413 for a body over the limit, whether or not Content-Length is sent."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._reject(send, 413 if length.isdigit() else 400)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await self._reject(send, 413)
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
        message = (f"request body over {self.max_bytes} bytes" if status == 413 else "invalid Content-Length header")
        payload = json.dumps(api.error_body(message, "invalid_request_error",
                                            "request_too_large" if status == 413 else "bad_request")).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


class Gateway:
    """The state behind the app: the engine holder, the worker limiter and the metrics."""

    def __init__(self, settings: GatewaySettings, holder: EngineHolder | None = None) -> None:
        self.settings = settings
        self.holder = holder or EngineHolder()
        self.metrics = GatewayMetrics()
        self.limiter = anyio.CapacityLimiter(settings.max_concurrency)
        self.admitted = 0  # requests answering or waiting for a worker

    async def run(self, fn: Any, *args: Any) -> Any:
        """Run blocking work on a worker thread; 429 once max_concurrency answer and max_queue wait."""
        capacity = self.settings.max_concurrency + self.settings.max_queue
        if self.admitted >= capacity:
            raise APIError(429, f"the gateway is at capacity ({self.settings.max_concurrency} answering, "
                                f"{self.settings.max_queue} waiting); retry shortly", "rate_limit_error", "queue_full")
        self.admitted += 1
        self.metrics.in_flight.inc()
        try:
            return await anyio.to_thread.run_sync(fn, *args, limiter=self.limiter)
        finally:
            self.admitted -= 1
            self.metrics.in_flight.dec()

    def answer(self, question: str) -> tuple[Answer, Deployment]:
        with self.holder.use() as engine:
            return engine.answer(question), engine.deployment

    def deploy(self, request: DeployRequest) -> dict[str, Any]:
        deployment = Deployment.load(request.deployment)
        engine = open_engine(deployment)
        try:
            engine.check()
            probe = engine.answer(request.probe)
        except Exception:
            engine.close()
            raise
        if probe.fallback:
            engine.close()
            raise ModelDown("slm", f"the new deployment's SLM at {deployment.endpoints.get('slm')} did not answer")
        old = self.holder.swap(engine)
        return {"serving": deployment.label, "previous": old.deployment.label if old else None,
                "probe": {"answer": probe.result["answer"], "model": probe.result["model"]}}


def create_app(settings: GatewaySettings, holder: EngineHolder | None = None) -> FastAPI:
    gateway = Gateway(settings, holder)
    app = FastAPI(title="escalate gateway", version="1", description=__doc__)
    app.state.gateway = gateway
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)

    def authorize(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not any(hmac.compare_digest(key.strip(), k) for k in settings.api_keys):
            raise APIError(401, "missing or invalid API key: send 'Authorization: Bearer <key>' with the key in "
                                f"${API_KEY_ENV}", "invalid_request_error", "invalid_api_key")

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        gateway.metrics.requests.labels(request.url.path, str(exc.status)).inc()
        return JSONResponse(exc.body, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """FastAPI's own refusals (unknown path, wrong method, undecodable body) in OpenAI's error shape."""
        gateway.metrics.requests.labels(request.url.path if exc.status_code != 404 else "other", str(exc.status_code)).inc()
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(api.error_body(str(exc.detail), kind), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        gateway.metrics.requests.labels(request.url.path, "500").inc()
        return JSONResponse(api.error_body(f"internal error: {type(exc).__name__}: {exc}", "server_error"),
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
        gateway.metrics.requests.labels(request.url.path, str(status)).inc()
        return JSONResponse(api.error_body(message, "invalid_request_error", "invalid_request", where or None),
                            status_code=status)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        engine = gateway.holder.engine
        if engine is None:
            return JSONResponse({"ready": False, "reason": "no deployment loaded"}, status_code=503)
        return JSONResponse({"ready": True, "deployment": engine.deployment.label, "strategy": engine.strategy,
                             "slm_bypassed": engine.slm_skipped()})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(gateway.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models() -> dict[str, Any]:
        engine = gateway.holder.engine
        data = [] if engine is None else [{"id": engine.deployment.model_name, "object": "model",
                                           "created": 0, "owned_by": "escalate"}]
        return {"object": "list", "data": data}

    async def complete(request: Any, chat: bool, route: str) -> Response:
        start = time.perf_counter()
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
            answer, deployment = await gateway.run(gateway.answer, question)
        except NotReady as exc:
            raise APIError(503, str(exc), "service_unavailable", "not_ready") from None
        except ModelDown as exc:
            gateway.metrics.model_errors.labels(exc.role).inc()
            raise APIError(503, f"{exc}; the question needed it, so it was not answered",
                           "service_unavailable", f"{exc.role}_unavailable") from None
        result = answer.result
        if answer.fallback:
            gateway.metrics.model_errors.labels("slm").inc()
        gateway.metrics.observe_answer(result, answer.fallback)
        text, finish = api.truncate(result["answer"], request.token_limit())
        meta = escalate_object(answer, deployment, time.perf_counter() - start)
        gateway.metrics.latency.labels(route).observe(time.perf_counter() - start)
        gateway.metrics.requests.labels(route, "200").inc()
        if request.stream:
            chunks = api.stream_chunks(chat, request.model, text, finish, result, meta)
            return StreamingResponse(_sse(chunks), media_type="text/event-stream")
        build = api.chat_body if chat else api.text_body
        return JSONResponse(build(request.model, text, finish, result, meta))

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat_completions(request: api.ChatCompletionRequest) -> Response:
        return await complete(request, True, "/v1/chat/completions")

    @app.post("/v1/completions", dependencies=[Depends(authorize)])
    async def completions(request: api.CompletionRequest) -> Response:
        return await complete(request, False, "/v1/completions")

    @app.post("/admin/deploy", dependencies=[Depends(authorize)])
    async def deploy(request: DeployRequest) -> dict[str, Any]:
        try:
            return await anyio.to_thread.run_sync(gateway.deploy, request)
        except (BundleError, ModelDown) as exc:
            raise APIError(409, f"deployment refused, still serving the previous one: {exc}",
                           "invalid_request_error", "deployment_refused") from None

    return app


def escalate_object(answer: Answer, deployment: Deployment, gateway_s: float) -> dict[str, Any]:
    """What every response says about how it was answered."""
    result = answer.result
    return {
        "model": result["model"], "served_by": answer.served_by, "escalated": result["escalated"],
        "fallback": answer.fallback, "confidence": _finite(result["confidence"]), "strategy": result["strategy"],
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
    """Load a deployment at start-up (same checks as /admin/deploy)."""
    return app.state.gateway.deploy(DeployRequest(deployment=str(deployment_path)))
