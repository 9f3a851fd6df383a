"""OpenAIBackend against a real local HTTP server that answers /v1/completions in OpenAI's shape."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from escalate.models.backends import openai_http
from escalate.models.backends.base import BackendError, Generation, SamplingParams, entropy_from_logprobs
from escalate.models.backends.openai_http import OpenAIBackend

# Each step's alternatives hold three tokens, as vLLM returns k=2 plus a sampled token outside the top 2.
STEP_TOP = {"token_id:7": math.log(0.4), "token_id:8": math.log(0.4), "token_id:9": math.log(0.2)}

Reply = tuple[int, bytes]


def completion(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI completion echoing the prompt, so tests can check which answer went to which prompt."""
    prompt = body["prompt"]
    choices = [
        {
            "index": i,
            "text": f"{prompt}/{i}",
            "finish_reason": "length",
            "logprobs": {
                "tokens": ["token_id:7", "token_id:9"],
                "token_logprobs": [math.log(0.4), math.log(0.2)],
                "top_logprobs": [STEP_TOP, STEP_TOP],
                "text_offset": [0, 1],
            },
        }
        for i in reversed(range(body["n"]))  # out of order: the backend must sort by index
    ]
    usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": 2 * body["n"]}
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "model": body["model"],
        "choices": choices,
        "usage": usage,
    }


def ok(body: dict[str, Any]) -> Reply:
    return 200, json.dumps(completion(body)).encode()


class FakeServer:
    """Records each request's path, headers and body, and the most requests it served at once."""

    def __init__(self, reply: Callable[[dict[str, Any]], Reply], delay_s: float = 0.0) -> None:
        self.reply = reply
        self.delay_s = delay_s
        self.requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.requests.append((self.path, dict(self.headers), body))
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                time.sleep(fake.delay_s)
                with fake.lock:
                    fake.in_flight -= 1
                status, payload = fake.reply(body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:  # vLLM's /health, which the gateway's readiness probes
                self.send_response(200 if self.path == "/health" else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


class JoiningHTTPServer(ThreadingHTTPServer):
    """Joins its handler threads on close, so no test leaves a thread behind."""

    daemon_threads = False


@contextmanager
def serve(fake: FakeServer, start_after_s: float = 0.0) -> Iterator[str]:
    """Serve `fake` on a free 127.0.0.1 port from a background thread, optionally starting late."""
    port = free_port()
    started = threading.Event()
    servers: list[JoiningHTTPServer] = []

    def run() -> None:
        time.sleep(start_after_s)
        servers.append(JoiningHTTPServer(("127.0.0.1", port), fake.handler()))
        started.set()
        servers[0].serve_forever(poll_interval=0.05)

    thread = threading.Thread(target=run)
    thread.start()
    if not start_after_s:
        started.wait(5)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        assert started.wait(5)
        servers[0].shutdown()
        servers[0].server_close()
        thread.join(5)
        assert not thread.is_alive()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openai_http, "BACKOFF_S", 0.1)


def test_generates_with_logprobs_entropies_counts_and_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESCALATE_TEST_KEY", "sk-test-123")
    fake = FakeServer(ok)
    with serve(fake) as url:
        backend = OpenAIBackend(url + "/v1", "tiny-slm", api_key_env="ESCALATE_TEST_KEY", top_logprobs=2)
        params = SamplingParams(max_new_tokens=2, temperature=0.7, n=3, seed=5, stop=("\n",))
        out = backend.generate(["two words", "three words here"], params)
        backend.close()

    assert [[g.text for g in gens] for gens in out] == [
        ["two words/0", "two words/1", "two words/2"],
        ["three words here/0", "three words here/1", "three words here/2"],
    ]
    g = out[0][0]
    assert g.token_ids == [7, 9] and g.n_output_tokens == 2
    assert g.token_logprobs == pytest.approx([math.log(0.4), math.log(0.2)])
    # Top 2 of {0.4, 0.4, 0.2} renormalised is uniform over two tokens.
    assert g.token_entropies == pytest.approx([math.log(2), math.log(2)])
    assert [gens[0].n_prompt_tokens for gens in out] == [2, 3]
    assert g.finish_reason == "length"
    assert all(gen.latency_s > 0 for gens in out for gen in gens)
    assert len({gen.latency_s for gen in out[0]}) == 1  # the n generations of a request share its latency

    path, headers, body = fake.requests[0]
    assert path == "/v1/completions"
    assert headers["Authorization"] == "Bearer sk-test-123"
    assert {k: body[k] for k in ("model", "max_tokens", "temperature", "n", "seed", "stop", "logprobs")} == {
        "model": "tiny-slm",
        "max_tokens": 2,
        "temperature": 0.7,
        "n": 3,
        "seed": 5,
        "stop": ["\n"],
        "logprobs": 2,
    }


def test_plain_tokens_get_placeholder_ids_and_full_top_k_entropy() -> None:
    def plain_tokens(body: dict[str, Any]) -> Reply:
        reply = completion(body)
        for choice in reply["choices"]:
            choice["logprobs"]["tokens"] = ["Hel", "lo"]
            choice["logprobs"]["top_logprobs"] = [{"Hel": -0.1, "He": -2.0, "H": -3.0}] * 2
        return 200, json.dumps(reply).encode()

    with serve(FakeServer(plain_tokens)) as url:
        backend = OpenAIBackend(url, "tiny-slm", top_logprobs=5)
        [[g]] = backend.generate(["hi"], SamplingParams())
        backend.close()
    assert g.token_ids == [-1, -1] and g.n_output_tokens == 2
    assert g.token_entropies == pytest.approx([entropy_from_logprobs([-0.1, -2.0, -3.0])] * 2)


def test_prompts_run_concurrently_within_the_bound_and_keep_their_order() -> None:
    fake = FakeServer(ok, delay_s=0.1)
    prompts = [f"p{i}" for i in range(6)]
    with serve(fake) as url:
        backend = OpenAIBackend(url, "tiny-slm", max_concurrency=2)
        out = backend.generate(prompts, SamplingParams())
        backend.close()
    assert [gens[0].text for gens in out] == [f"p{i}/0" for i in range(6)]
    assert fake.max_in_flight == 2
    assert all(gens[0].latency_s >= 0.1 for gens in out)


def test_retries_while_the_server_is_starting() -> None:
    with serve(FakeServer(ok), start_after_s=0.05) as url:
        backend = OpenAIBackend(url, "tiny-slm")
        [[g]] = backend.generate(["hi"], SamplingParams())
        backend.close()
    assert g.text == "hi/0"


def test_server_down_names_url_model_and_fix() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    backend = OpenAIBackend(url, "tiny-slm")
    with pytest.raises(BackendError) as err:
        backend.generate(["hi"], SamplingParams())
    backend.close()
    message = str(err.value)
    assert f"{url}/v1/completions" in message and "'tiny-slm'" in message
    assert "after 3 attempts" in message and "Is the server running?" in message


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (lambda body: (500, b'{"error": "CUDA out of memory"}'), ["HTTP 500", "CUDA out of memory", "log"]),
        (lambda body: (404, b'{"error": "no model"}'), ["HTTP 404", "/v1/models"]),
        (lambda body: (200, b"<html>not json"), ["not an OpenAI completion", "<html>not json"]),
        (lambda body: (200, b'{"choices": []}'), ["expected 1 choices, got 0"]),
        (
            lambda body: (
                200,
                json.dumps({**completion(body), "choices": [{"index": 0, "text": "x"}]}).encode(),
            ),
            ["no `logprobs`"],
        ),
    ],
    ids=["500", "404", "not-json", "wrong-n", "no-logprobs"],
)
def test_bad_answers_raise_backend_errors_naming_url_and_model(
    reply: Callable[[dict[str, Any]], Reply], expected: list[str]
) -> None:
    with serve(FakeServer(reply)) as url:
        backend = OpenAIBackend(url, "tiny-slm")
        with pytest.raises(BackendError) as err:
            backend.generate(["hi"], SamplingParams())
        backend.close()
    message = str(err.value)
    assert f"{url}/v1/completions" in message and "'tiny-slm'" in message
    for part in expected:
        assert part in message


def test_timeout_raises_backend_error() -> None:
    with serve(FakeServer(ok, delay_s=0.5)) as url:
        backend = OpenAIBackend(url, "tiny-slm", timeout_s=0.1)
        with pytest.raises(BackendError, match="did not answer within 0.1 s"):
            backend.generate(["hi"], SamplingParams())
        backend.close()


def test_missing_api_key_env_fails_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ESCALATE_TEST_KEY", raising=False)
    with pytest.raises(BackendError, match="ESCALATE_TEST_KEY is not set"):
        OpenAIBackend("http://127.0.0.1:1", "m", api_key_env="ESCALATE_TEST_KEY")


def test_no_prompts_sends_nothing() -> None:
    backend = OpenAIBackend("http://127.0.0.1:1", "m")
    assert backend.generate([], SamplingParams()) == []
    backend.close()


def test_failures_are_sorted_into_down_refused_and_unscorable() -> None:
    """The gateway bypasses a down model but answers 400 for a request its server refused."""
    replies = {"refused": (400, b'{"error": "maximum context length is 1024 tokens"}'), "down": (503, b"{}")}
    with serve(FakeServer(lambda body: replies.get(body["prompt"]) or ok(body))) as url:
        backend = OpenAIBackend(url, "tiny-slm")
        with pytest.raises(openai_http.BackendRejected) as refused:
            backend.generate(["refused"], SamplingParams())
        with pytest.raises(openai_http.BackendUnavailable):
            backend.generate(["down"], SamplingParams())
        backend.close()
    assert refused.value.status == 400
    with pytest.raises(openai_http.BackendUnavailable):
        OpenAIBackend(f"http://127.0.0.1:{free_port()}", "tiny-slm").generate(["hi"], SamplingParams())


def test_null_logprobs_become_nan_not_a_crash() -> None:
    def nulls(body: dict[str, Any]) -> Reply:
        reply = completion(body)
        reply["choices"][0]["logprobs"].update(token_logprobs=[None, math.log(0.2)], top_logprobs=None)
        return 200, json.dumps(reply).encode()

    with serve(FakeServer(nulls)) as url:
        backend = OpenAIBackend(url, "tiny-slm")
        [[g]] = backend.generate(["hi"], SamplingParams())
        backend.close()
    assert math.isnan(g.token_logprobs[0]) and all(math.isnan(e) for e in g.token_entropies)


def test_the_callers_deadline_caps_the_wait() -> None:
    with serve(FakeServer(ok, delay_s=0.5)) as url:
        backend = OpenAIBackend(url, "tiny-slm", timeout_s=30)
        start = time.monotonic()
        with openai_http.deadline(start + 0.1), pytest.raises(openai_http.BackendTimeout):
            backend.generate(["hi"], SamplingParams())
        assert time.monotonic() - start < 0.4
        with openai_http.deadline(time.monotonic() - 1), pytest.raises(openai_http.BackendTimeout, match="no time"):
            backend.generate(["hi"], SamplingParams())
        backend.close()


def test_top_k_entropies_equal_the_per_step_reference_for_ragged_and_missing_steps() -> None:
    """One array pass gives each step's entropy over its k largest alternatives, as the per-step formula does."""
    steps = [STEP_TOP, {"token_id:1": -0.01}, None, {}, {f"token_id:{i}": -0.5 * i for i in range(40)}]
    got = openai_http.top_k_entropies(steps, 2)
    expected = [entropy_from_logprobs(sorted(s.values(), reverse=True)[:2]) if s else math.nan for s in steps]
    assert got.tolist() == pytest.approx(expected, nan_ok=True)
    assert openai_http.top_k_entropies([STEP_TOP], 3)[0] == pytest.approx(entropy_from_logprobs(list(STEP_TOP.values())))
    assert openai_http.top_k_entropies([None, None], 5).tolist() == pytest.approx([math.nan] * 2, nan_ok=True)



def test_async_generation_equals_blocking_and_keeps_the_bound() -> None:
    """The gateway's agenerate gives the generations generate gives, at most max_concurrency requests at once."""
    fake = FakeServer(ok, delay_s=0.05)
    prompts = [f"p{i}" for i in range(6)]
    params = SamplingParams(max_new_tokens=2, n=2)
    with serve(fake) as url:
        backend = OpenAIBackend(url, "tiny-slm", max_concurrency=2, top_logprobs=2)
        blocking = backend.generate(prompts, params)
        awaited = asyncio.run(backend.agenerate(prompts, params))
        backend.close()
    strip = [[(g.text, g.token_ids, g.token_logprobs, g.token_entropies, g.n_prompt_tokens) for g in gens]
             for gens in blocking]
    assert strip == [[(g.text, g.token_ids, g.token_logprobs, g.token_entropies, g.n_prompt_tokens) for g in gens]
                     for gens in awaited]
    assert fake.max_in_flight == 2


def test_separate_async_calls_do_not_wait_on_each_other_for_a_connection() -> None:
    """The gateway bounds requests in flight; the async pool adds no bound of its own, so no request's
    reported model latency hides a wait for a connection."""
    fake = FakeServer(ok, delay_s=0.2)
    with serve(fake) as url:
        backend = OpenAIBackend(url, "tiny-slm", max_concurrency=1)

        async def six_requests() -> list[list[list[Generation]]]:
            return await asyncio.gather(*(backend.agenerate([f"p{i}"], SamplingParams()) for i in range(6)))

        answers = asyncio.run(six_requests())
        backend.close()
    assert fake.max_in_flight == 6
    assert max(gens[0][0].latency_s for gens in answers) < 0.2 * 3


def test_async_failures_are_sorted_as_blocking_ones() -> None:
    """Down after the retries, refused, a timeout within the caller's deadline: the same errors as generate's."""
    down = OpenAIBackend(f"http://127.0.0.1:{free_port()}", "tiny-slm")
    with pytest.raises(openai_http.BackendUnavailable, match="after 3 attempts"):
        asyncio.run(down.agenerate(["hi"], SamplingParams()))
    down.close()
    replies = {"refused": (400, b'{"error": "too long"}')}
    with serve(FakeServer(lambda body: replies.get(body["prompt"]) or ok(body), delay_s=0.3)) as url:
        backend = OpenAIBackend(url, "tiny-slm", timeout_s=30)
        with pytest.raises(openai_http.BackendRejected):
            asyncio.run(backend.agenerate(["refused"], SamplingParams()))

        async def within_deadline() -> None:
            with openai_http.deadline(time.monotonic() + 0.1):
                await backend.agenerate(["hi"], SamplingParams())

        start = time.monotonic()
        with pytest.raises(openai_http.BackendTimeout):
            asyncio.run(within_deadline())
        assert time.monotonic() - start < 0.25
        backend.close()
