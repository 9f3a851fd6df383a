"""Generation through any OpenAI-compatible HTTP endpoint: a vLLM server, or an API model as the LLM.

It speaks the legacy `/v1/completions` endpoint because that one takes a raw prompt and returns,
per emitted token, its log-probability and the top-k alternatives, which P(T) and entropy need;
vLLM's OpenAI server and most compatible servers support it.

Token ids: OpenAI-style responses carry token strings, not ids. A vLLM server started with
`--return-tokens-as-token-ids` writes each token as `token_id:<id>`, and those ids are kept;
otherwise each token gets the placeholder id -1, so `n_output_tokens` is still right.

Failures come in kinds, because a server that is down and a request it refused call for different
responses (the gateway bypasses a down SLM, but a prompt over one model's context is that request's
problem alone): BackendUnavailable (no connection, a timeout, a 5xx), BackendRejected (a 4xx) and
BadCompletion (an answer without usable log-probabilities). A missing log-probability inside an
otherwise whole answer becomes NaN, which scores NaN and so escalates (evaluation.decision).
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import aiohttp
import httpx
import numpy as np
import orjson

from escalate.models.backends.base import (
    BackendError,
    Generation,
    GenerationBackend,
    SamplingParams,
    offsets_from_pieces,
)

# A server that is still starting refuses connections for a moment; a few short waits ride that out
# without hiding a server that is really down.
CONNECT_ATTEMPTS = 3
BACKOFF_S = 0.2
TOKEN_ID_PREFIX = "token_id:"
UNKNOWN_TOKEN_ID = -1
START_HINT = (
    "Is the server running? Start one with `python -m vllm.entrypoints.openai.api_server "
    "--model <path> --port <port> --return-tokens-as-token-ids` (in .venv-serve), or fix base_url."
)
JSON_HEADERS = {"content-type": "application/json"}
# The same failures from the blocking client (httpx) and the async one (aiohttp, which costs the gateway a
# fraction of httpx's async client's CPU per request: bench/gateway_overhead.py).
CONNECT_ERRORS = (httpx.ConnectError, aiohttp.ClientConnectorError)
TIMEOUTS = (httpx.TimeoutException, asyncio.TimeoutError)
TRANSPORT_ERRORS = (httpx.HTTPError, aiohttp.ClientError)
# time.monotonic() after which no request of this context may wait for an answer (None: timeout_s only).
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("openai_http_deadline", default=None)


class BackendUnavailable(BackendError):
    """The server could not answer now: no connection, a timeout or a 5xx."""


class BackendTimeout(BackendUnavailable):
    """No answer within timeout_s or before the caller's deadline."""


class BackendRejected(BackendError):
    """The server refused this request with a 4xx (say, a prompt over the model's context): the request's fault."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class BadCompletion(BackendError):
    """A 200 whose body is not an OpenAI completion with log-probabilities."""


@contextmanager
def deadline(until: float | None) -> Iterator[None]:
    """Requests made inside wait for their answer until time.monotonic() reaches `until` at most."""
    token = _DEADLINE.set(until)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def completions_url(base_url: str) -> str:
    """Accept both `http://host:8000` and the OpenAI-client style `http://host:8000/v1`."""
    base = base_url.rstrip("/")
    return f"{base}/completions" if base.endswith("/v1") else f"{base}/v1/completions"


def request_body(model: str, prompt: str, params: SamplingParams, top_logprobs: int) -> dict[str, Any]:
    """One prompt per request, so each request's latency belongs to exactly one prompt."""
    body: dict[str, Any] = {
        "model": model,
        "prompt": prompt,
        "max_tokens": params.max_new_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "n": params.n,
        "seed": params.seed,
        "logprobs": top_logprobs,
    }
    if params.stop:
        body["stop"] = list(params.stop)
    return body


def token_ids(tokens: list[str]) -> list[int]:
    """The ids in `token_id:<id>` tokens, else the placeholder that still counts as one token (one pass: the
    gateway reads ~100 per request)."""
    n = len(TOKEN_ID_PREFIX)
    return [int(t[n:]) if t.startswith(TOKEN_ID_PREFIX) else UNKNOWN_TOKEN_ID for t in tokens]


def top_k_entropies(steps: list[dict[str, float] | None], k: int) -> np.ndarray:
    """Each step's entropy over its k most likely alternatives, renormalised (NaN where a step has none).

    Servers add the sampled token to the alternatives when it is outside the top k (vLLM does);
    keeping the k largest makes the entropy mean the same whatever was sampled. All steps in one array
    pass: a full-vocabulary response is 96 steps of 400 values, which Python loops took over 100 ms to reduce.
    """
    widths = [len(step) if step else 0 for step in steps]
    width = max(widths, default=0)
    if width == 0:
        return np.full(len(steps), math.nan)
    if k == 1:  # one alternative renormalised is certain: what a router that reads no entropy asks for
        return np.where(np.asarray(widths) > 0, 0.0, math.nan)
    lps = np.full((len(steps), width), -np.inf)
    for row, (step, n) in enumerate(zip(steps, widths)):
        if n:
            lps[row, :n] = np.fromiter(step.values(), float, n)
    if width > k:  # the k largest per step (the sampled token may be an extra one)
        lps = -np.partition(-lps, k - 1, axis=1)[:, :k]
    with np.errstate(invalid="ignore", divide="ignore"):  # all-(-inf) rows (no alternatives) become NaN below
        p = np.exp(lps - lps.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    entropy[np.asarray(widths) == 0] = math.nan
    return entropy


def choice_to_generation(
    choice: dict[str, Any], n_prompt_tokens: int, top_logprobs: int, latency_s: float
) -> Generation:
    """Convert one `choices[i]` of a completion; raises ValueError, KeyError or TypeError when malformed."""
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict):
        raise TypeError("a choice has no `logprobs`; the server must support `logprobs` on /v1/completions")
    tokens = logprobs["tokens"]
    token_logprobs = [math.nan if lp is None else float(lp) for lp in logprobs["token_logprobs"]]
    steps = logprobs["top_logprobs"]
    steps = [None] * len(tokens) if steps is None else steps
    if not len(tokens) == len(token_logprobs) == len(steps):
        raise ValueError("`tokens`, `token_logprobs` and `top_logprobs` differ in length")
    return Generation(
        text=str(choice["text"]),
        token_ids=token_ids(tokens),
        token_logprobs=token_logprobs,
        token_entropies=top_k_entropies(steps, top_logprobs).tolist(),
        token_offsets=token_offsets(logprobs, tokens),
        n_prompt_tokens=n_prompt_tokens,
        latency_s=latency_s,
        finish_reason=choice.get("finish_reason") or "stop",
    )


def token_offsets(logprobs: dict[str, Any], tokens: list[str]) -> list[int]:
    """Token start offsets in the completion text: from `text_offset` (made relative), else token lengths."""
    offsets = logprobs.get("text_offset")
    if isinstance(offsets, list) and len(offsets) == len(tokens) and offsets:
        return [int(o) - int(offsets[0]) for o in offsets]
    if any(t.startswith("token_id:") for t in tokens):
        return []
    return offsets_from_pieces(tokens)


def parse_completion(body: Any, n: int, top_logprobs: int, latency_s: float) -> list[Generation]:
    """The n generations of one completion response, in `index` order."""
    choices = sorted(body["choices"], key=lambda c: c["index"])
    if len(choices) != n:
        raise ValueError(f"expected {n} choices, got {len(choices)}")
    n_prompt_tokens = int(body["usage"]["prompt_tokens"])
    return [choice_to_generation(c, n_prompt_tokens, top_logprobs, latency_s) for c in choices]


def status_hint(status: int, api_key_env: str | None) -> str:
    """What to do about an HTTP error status, in words."""
    if status in (401, 403):
        if api_key_env:
            return f"the server refused the credentials; check the key in ${api_key_env}"
        return "the server wants an API key; set api_key_env to the environment variable that holds it"
    if status == 404:
        return "check the model name (GET /v1/models lists what the server serves) and base_url"
    if status == 429:
        return "the server is rate-limiting; lower max_concurrency or retry later"
    if status >= 500:
        return "the server failed while generating; see its log"
    return "the server rejected the request; see its message"


def read_api_key(api_key_env: str) -> str:
    """Secrets come only from the environment, never from config."""
    key = os.environ.get(api_key_env)
    if not key:
        raise BackendError(f"environment variable {api_key_env} is not set; export it with the API key")
    return key


class OpenAIBackend(GenerationBackend):
    """Sends one request per prompt, up to max_concurrency at once per call, over a shared connection pool.

    latency_s of each generation is the wall time of its prompt's request (the attempt that got an
    answer), so all n generations of a prompt share it. `generate` blocks on a thread pool; `agenerate`
    (the gateway's) awaits an aiohttp session's pool, opened on first use in the caller's event loop.
    That pool has no limit of its own: the gateway already bounds the requests in flight, and a second
    bound here would make a request wait for a connection inside what is reported as the model's latency.
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = None,
        timeout_s: float = 60.0,
        top_logprobs: int = 5,
        max_concurrency: int = 8,
    ) -> None:
        if top_logprobs < 1:
            raise ValueError(f"top_logprobs must be >= 1 (entropy needs alternatives), got {top_logprobs}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.url = completions_url(base_url)
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.top_logprobs = top_logprobs
        self.max_concurrency = max_concurrency
        self._headers = {"Authorization": f"Bearer {read_api_key(api_key_env)}"} if api_key_env else {}
        self._client = httpx.Client(headers=self._headers, timeout=timeout_s,
                                    limits=httpx.Limits(max_connections=max_concurrency))
        self._async: tuple[asyncio.AbstractEventLoop, aiohttp.ClientSession] | None = None

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Generation]]:
        if not prompts:
            return []
        if len(prompts) == 1:  # the gateway's case: no pool to start and stop
            return [self._complete(prompts[0], params)]
        pool = ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(prompts)))
        context = contextvars.copy_context()  # each task runs in a copy, so the caller's deadline holds there too
        try:
            return list(pool.map(lambda prompt: context.copy().run(self._complete, prompt, params), prompts))
        finally:
            # On the first failure, drop the prompts not yet sent instead of failing each in turn.
            pool.shutdown(cancel_futures=True)

    async def agenerate(self, prompts: list[str], params: SamplingParams) -> list[list[Generation]]:
        if len(prompts) == 1:
            return [await self._acomplete(prompts[0], params)]
        places = asyncio.Semaphore(self.max_concurrency)

        async def bounded(prompt: str) -> list[Generation]:
            async with places:
                return await self._acomplete(prompt, params)

        return list(await asyncio.gather(*(bounded(prompt) for prompt in prompts)))

    def close(self) -> None:
        """Close both pools."""
        self._client.close()
        self.close_async()

    def close_async(self) -> None:
        """Close the async pool: on its own loop while that runs, else at once (no loop is left to wait on)."""
        if self._async is not None:
            (loop, session), self._async = self._async, None
            if loop.is_running():
                asyncio.run_coroutine_threadsafe(session.close(), loop)
            elif session.connector is not None:
                session.connector._close()  # the sync half of close(): drops the connections, awaits nothing

    def _complete(self, prompt: str, params: SamplingParams) -> list[Generation]:
        status, content, latency_s = self._post(request_body(self.model, prompt, params, self.top_logprobs))
        return self._generations(status, content, latency_s, params)

    async def _acomplete(self, prompt: str, params: SamplingParams) -> list[Generation]:
        status, content, latency_s = await self._apost(request_body(self.model, prompt, params, self.top_logprobs))
        return self._generations(status, content, latency_s, params)

    def _session(self) -> aiohttp.ClientSession:
        """The async pool of the running event loop (an aiohttp session belongs to the loop that opened it)."""
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            self.close_async()
            connector = aiohttp.TCPConnector(limit=0)  # unbounded: see the class docstring
            self._async = (loop, aiohttp.ClientSession(connector=connector, headers=self._headers))
        return self._async[1]

    def _generations(self, status: int, content: bytes, latency_s: float, params: SamplingParams) -> list[Generation]:
        """A response's generations, or the BackendError that says what was wrong with it."""
        text = content[:300].decode("utf-8", "replace")
        if status >= 400:
            message = (f"{self.url} answered HTTP {status} for model {self.model!r}: "
                       f"{text!r}. {status_hint(status, self.api_key_env)}.")
            if status < 500:
                raise BackendRejected(message, status)
            raise BackendUnavailable(message)
        try:
            # orjson: a full-vocabulary body is about a megabyte, which the standard parser takes ~5x longer to read.
            return parse_completion(orjson.loads(content), params.n, self.top_logprobs, latency_s)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # orjson.JSONDecodeError is a ValueError
            reason = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise BadCompletion(
                f"{self.url} returned a body that is not an OpenAI completion with logprobs for model "
                f"{self.model!r} ({reason}): {text!r}. "
                "Check that base_url points at an OpenAI-compatible server."
            ) from None

    def _post(self, body: dict[str, Any]) -> tuple[int, bytes, float]:
        """POST with bounded retries on refused connections: (status, body, seconds); transport failures become
        BackendErrors."""
        for attempt in range(1, CONNECT_ATTEMPTS + 1):
            start, timeout = time.perf_counter(), self._timeout()
            with self._transport_errors(timeout, attempt) as refused:
                response = self._client.post(self.url, content=orjson.dumps(body), timeout=timeout,
                                             headers=JSON_HEADERS)
                return response.status_code, response.content, time.perf_counter() - start
            time.sleep(refused.backoff_s)
        raise AssertionError("unreachable: the last attempt raises")

    async def _apost(self, body: dict[str, Any]) -> tuple[int, bytes, float]:
        """_post on the async pool."""
        for attempt in range(1, CONNECT_ATTEMPTS + 1):
            start, timeout = time.perf_counter(), self._timeout()
            with self._transport_errors(timeout, attempt) as refused:
                async with self._session().post(self.url, data=orjson.dumps(body), headers=JSON_HEADERS,
                                                timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                    content = await response.read()
                return response.status, content, time.perf_counter() - start
            await asyncio.sleep(refused.backoff_s)
        raise AssertionError("unreachable: the last attempt raises")

    def _timeout(self) -> float:
        """This attempt's timeout: timeout_s, or less where the caller's deadline comes first."""
        until = _DEADLINE.get()
        timeout = self.timeout_s if until is None else min(self.timeout_s, until - time.monotonic())
        if timeout <= 0:
            raise BackendTimeout(f"no time was left to ask {self.url} for model {self.model!r} before the deadline")
        return timeout

    @contextmanager
    def _transport_errors(self, timeout: float, attempt: int) -> Iterator[_Refused]:
        """Transport failures as BackendErrors; a refused connection before the last attempt is swallowed and
        says how long to wait before the next one (the caller's loop retries)."""
        refused = _Refused()
        try:
            yield refused
        except CONNECT_ERRORS as exc:
            if attempt >= CONNECT_ATTEMPTS:
                raise BackendUnavailable(
                    f"cannot connect to {self.url} for model {self.model!r} after {attempt} attempts "
                    f"({exc}). {START_HINT}"
                ) from None
            refused.backoff_s = BACKOFF_S * attempt
        except TIMEOUTS:
            raise BackendTimeout(
                f"{self.url} did not answer within {round(timeout, 3)} s for model {self.model!r}; the "
                "server may be overloaded or still loading the model. Raise timeout_s or check its log."
            ) from None
        except TRANSPORT_ERRORS as exc:
            raise BackendUnavailable(
                f"request to {self.url} for model {self.model!r} failed: {type(exc).__name__}: {exc}. "
                f"{START_HINT}"
            ) from None


class _Refused:
    """How long to wait before retrying a refused connection (set by OpenAIBackend._transport_errors)."""

    backoff_s: float = 0.0
