"""The gateway's HTTP contract, around a stand-in engine (the real engine is tested end to end in
test_serving_e2e.py): auth, OpenAI error bodies and codes, streaming, limits, model-down handling,
metrics and the no-drop swap."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient

from escalate.cascade import RESULT_FIELDS
from escalate.serving import gateway as gateway_module
from escalate.serving.deployment import Deployment
from escalate.serving.engine import Answer, EngineHolder, ModelDown
from escalate.serving.gateway import GatewaySettings, create_app
from tests.gateway_requests import BlockingEngine

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
QUESTION = "Eva has 7 cups. Then gives away 1. How many cups does Eva have now?"


def result(model: str = "slm", answer: str = "6") -> dict[str, Any]:
    row = dict.fromkeys(RESULT_FIELDS, 0.0)
    row.update(question=QUESTION, answer=answer, parsed_answer=answer, model=model, escalated=model == "llm",
               confidence=0.91, score=-0.141, strategy="entropy", threshold=0.5, cost_slm=1.5,
               cost=1.5 + (20.0 if model == "llm" else 0),
               cost_llm=20.0 if model == "llm" else 0.0, slm_prompt_tokens=30, slm_output_tokens=3,
               llm_prompt_tokens=30 if model == "llm" else 0, llm_output_tokens=3 if model == "llm" else 0,
               latency_slm_s=0.01, latency_llm_s=0.05 if model == "llm" else 0.0)
    return row


SERVED = {"slm": "v1-slm", "llm": "v1-llm"}


def served(row: dict[str, Any], fallback: str | None = None) -> Answer:
    """An answer as the HTTP engine gives it: served by the vLLM server of the model that answered."""
    return Answer(row, fallback, SERVED[row["model"]])


class StandInEngine(BlockingEngine):
    """Duck-types serving.engine.Engine; `behaviour` decides each answer."""

    def __init__(self, behaviour: Any = None, version: str = "1") -> None:
        self.deployment = Deployment("escalate-cascade", version, "champion", "/nowhere", served_names=SERVED)
        self.strategy = "entropy"
        self.behaviour = behaviour or (lambda q: served(result()))
        self.closed = False

    def answer(self, question: str, budget: Any = None) -> Answer:
        return self.behaviour(question)

    def slm_skipped(self) -> bool:
        return False

    def reachable(self) -> dict[str, bool]:
        return {"slm": True, "llm": True}

    def close(self) -> None:
        self.closed = True


def client(engine: Any = None, **limits: Any) -> TestClient:
    """A client on loopback (where /metrics answers without a key)."""
    holder = EngineHolder()
    if engine is not None:
        holder.swap(engine)
    return TestClient(create_app(GatewaySettings(api_keys=(KEY,), **limits), holder), client=("127.0.0.1", 50000))


def chat(c: TestClient, **extra: Any) -> Any:
    body = {"model": "escalate-cascade", "messages": [{"role": "user", "content": QUESTION}], **extra}
    return c.post("/v1/chat/completions", json=body, headers=AUTH)


def test_chat_answer_says_who_answered_and_at_what_cost() -> None:
    r = chat(client(StandInEngine()))
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"] == "6"
    e = body["escalate"]
    assert (e["model"], e["served_by"], e["escalated"], e["strategy"]) == ("slm", "v1-slm", False, "entropy")
    assert e["confidence"] == pytest.approx(0.91) and e["cost"]["total"] == pytest.approx(1.5)
    assert e["score"] == pytest.approx(-0.141)  # the router's raw score, apart from the probability
    assert e["tokens"]["slm"] == {"prompt": 30, "output": 3} and e["latency_s"]["gateway"] > 0
    assert body["usage"] == {"prompt_tokens": 30, "completion_tokens": 3, "total_tokens": 33}


def test_completions_and_streaming() -> None:
    c = client(StandInEngine(lambda q: served(result("llm", "the answer is 6"))))
    r = c.post("/v1/completions", json={"model": "escalate-cascade", "prompt": QUESTION}, headers=AUTH)
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "the answer is 6"
    r = chat(c, stream=True)
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks) == "the answer is 6"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["escalate"]["model"] == "llm"


def test_max_tokens_truncates() -> None:
    r = chat(client(StandInEngine(lambda q: served(result("slm", "one two three")))), max_tokens=2)
    assert r.json()["choices"][0] == {"index": 0, "message": {"role": "assistant", "content": "one two"},
                                      "finish_reason": "length", "logprobs": None}
    # usage counts what the client got (the SLM wrote 3 tokens, 2 came back); the escalate object keeps all 3
    assert r.json()["usage"] == {"prompt_tokens": 30, "completion_tokens": 2, "total_tokens": 32}
    assert r.json()["escalate"]["tokens"]["slm"]["output"] == 3
    untouched = chat(client(StandInEngine(lambda q: served(result("slm", "one two three")))), max_tokens=5)
    assert untouched.json()["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize(("extra", "param"), [
    ({"logprobs": True}, "logprobs"), ({"top_logprobs": 3}, "top_logprobs"),
    ({"response_format": {"type": "json_object"}}, "response_format"), ({"stop": ["\n"]}, "stop"),
    ({"stop": "END"}, "stop"), ({"n": 2}, "n"),
])
def test_parameters_the_gateway_cannot_apply_are_refused_by_name(extra: dict, param: str) -> None:
    r = chat(client(StandInEngine()), **extra)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["code"] == "unsupported_parameter" and param in error["message"]


@pytest.mark.parametrize("extra", [{"logprobs": False}, {"response_format": {"type": "text"}}, {"stop": None},
                                   {"stop": []}, {"n": 1}])
def test_their_defaults_are_accepted(extra: dict) -> None:
    assert chat(client(StandInEngine()), **extra).status_code == 200


def test_echo_is_refused_on_completions() -> None:
    body = {"model": "escalate-cascade", "prompt": QUESTION, "echo": True}
    r = client(StandInEngine()).post("/v1/completions", json=body, headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["param"] == "echo"


@pytest.mark.parametrize("stream", [False, True])
def test_route_and_cost_ride_in_headers_too(stream: bool) -> None:
    r = chat(client(StandInEngine(lambda q: served(result("llm")))), stream=stream)
    assert r.status_code == 200
    assert r.headers["x-escalate-model"] == "llm" and r.headers["x-escalate-strategy"] == "entropy"
    assert r.headers["x-escalate-escalated"] == "true" and float(r.headers["x-escalate-cost"]) == 21.5
    assert r.headers["x-escalate-version"] == "1"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}])
def test_missing_or_wrong_key_is_401(headers: dict[str, str]) -> None:
    r = client(StandInEngine()).post("/v1/chat/completions", headers=headers,
                                     json={"model": "escalate-cascade", "messages": [{"role": "user", "content": "q"}]})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"model": "escalate-cascade", "messages": []}, 422, "messages"),
    ({"model": "escalate-cascade", "messages": [{"role": "user", "content": QUESTION}], "n": 3}, 400, "n"),
    ({"model": "escalate-cascade", "messages": [{"role": "user", "content": QUESTION}], "n": 129}, 422, "n"),
    ({"model": "escalate-cascade", "messages": [{"role": "robot", "content": "x"}]}, 422, "messages.0.role"),
    ({"messages": [{"role": "user", "content": QUESTION}]}, 422, "model"),
    ({"model": "escalate-cascade", "messages": [{"role": "system", "content": "be brief"}]}, 400, "messages"),
    ({"model": "escalate-cascade", "messages": [{"role": "user", "content": "   "}]}, 400, "messages"),
    ({"model": "gpt-4", "messages": [{"role": "user", "content": QUESTION}]}, 404, "model"),
])
def test_bad_requests_get_openai_error_bodies(body: dict, status: int, param: str) -> None:
    r = client(StandInEngine()).post("/v1/chat/completions", json=body, headers=AUTH)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["message"] and error["type"] == "invalid_request_error"


def test_malformed_json_is_400_and_oversized_is_413() -> None:
    c = client(StandInEngine(), max_body_bytes=2048)
    r = c.post("/v1/chat/completions", content=b"{not json", headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    big = {"model": "escalate-cascade", "messages": [{"role": "user", "content": "x" * 5000}]}
    r = c.post("/v1/chat/completions", json=big, headers=AUTH)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunked():  # no Content-Length: the limit still holds while reading
        yield b'{"model": "escalate-cascade", "messages": [{"role": "user", "content": "'
        yield b"y" * 4000
        yield b'"}]}'

    r = c.post("/v1/chat/completions", content=chunked(), headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 413


def test_llm_down_is_503_and_slm_down_falls_back_to_the_llm() -> None:
    def llm_down(q: str) -> Answer:
        raise ModelDown("llm", "cannot connect to http://127.0.0.1:1/v1/completions")

    c = client(StandInEngine(llm_down))
    r = chat(c)
    assert r.status_code == 503 and r.json()["error"]["code"] == "llm_unavailable"
    c = client(StandInEngine(lambda q: served({**result("llm"), "threshold": float("inf")}, "slm_down")))
    r = chat(c)
    assert r.status_code == 200 and r.json()["escalate"]["fallback"] == "slm_down"
    assert r.json()["escalate"]["threshold"] is None  # JSON has no inf
    metrics = c.get("/metrics").text
    assert 'escalate_escalations_total{reason="slm_down"} 1.0' in metrics
    assert 'escalate_model_unavailable_total{model="slm"} 1.0' in metrics


def test_not_ready_without_a_deployment() -> None:
    c = client(None)
    assert c.get("/health").status_code == 200
    assert c.get("/ready").status_code == 503
    r = chat(c)
    assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"


def test_full_queue_is_429() -> None:
    release = threading.Event()

    def slow(q: str) -> Answer:
        release.wait(10)
        return served(result())

    statuses: list[int] = []
    with client(StandInEngine(slow), max_concurrency=1, max_queue=1) as c:  # one event loop for all requests
        threads = [threading.Thread(target=lambda: statuses.append(chat(c).status_code)) for _ in range(2)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 5
        while c.app.state.gateway.admitted < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        third = chat(c)
        release.set()
        for t in threads:
            t.join()
    assert third.status_code == 429 and third.json()["error"]["code"] == "queue_full"
    assert third.headers["retry-after"] == "1"
    assert sorted(statuses) == [200, 200]


def test_swap_lets_requests_in_flight_finish_on_the_old_engine() -> None:
    started, release = threading.Event(), threading.Event()

    def slow(q: str) -> Answer:
        started.set()
        release.wait(10)
        return served(result(answer="old"))

    old, new = StandInEngine(slow, "1"), StandInEngine(lambda q: served(result(answer="new")), "2")
    c = client(old)
    holder = c.app.state.gateway.holder
    answers: list[str] = []
    t = threading.Thread(target=lambda: answers.append(chat(c).json()["escalate"]["deployment"]["version"]))
    t.start()
    assert started.wait(5)
    holder.swap(new)
    assert not old.closed  # still answering
    assert chat(c).json()["escalate"]["deployment"]["version"] == "2"
    release.set()
    t.join()
    assert answers == ["1"] and old.closed and not new.closed


@pytest.mark.parametrize("header", [b"Bearer \xd0\xba\xd0\xbb\xd1\x8e\xd1\x87", b"Bearer \xff\x00\x01",
                                    b"Bearer test-key\xe9", "Bearer tést-key".encode()])
def test_non_ascii_or_binary_keys_are_401_not_500(header: bytes) -> None:
    c = TestClient(create_app(GatewaySettings(api_keys=(KEY,))), raise_server_exceptions=False)
    r = c.post("/v1/chat/completions", headers=[(b"authorization", header)], json={"model": "m", "messages": []})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_an_unexpected_error_is_500_without_its_text() -> None:
    def broken(q: str) -> Answer:
        raise RuntimeError("secret detail at http://10.0.0.7:8001")

    holder = EngineHolder()
    holder.swap(StandInEngine(broken))
    c = TestClient(create_app(GatewaySettings(api_keys=(KEY,)), holder), raise_server_exceptions=False)
    r = chat(c)
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    assert "secret" not in r.text and "RuntimeError" not in r.text and "10.0.0.7" not in r.text


def test_metrics_answer_loopback_or_a_metrics_key_and_docs_are_off() -> None:
    app = create_app(GatewaySettings(api_keys=(KEY,), metrics_keys=("scrape",)))
    remote = TestClient(app, client=("203.0.113.9", 4000))
    assert remote.get("/metrics").status_code == 403
    assert remote.get("/metrics", headers=AUTH).status_code == 403  # a client key is not a metrics key
    assert remote.get("/metrics", headers={"Authorization": "Bearer scrape"}).status_code == 200
    assert TestClient(app, client=("127.0.0.1", 4000)).get("/metrics").status_code == 200
    for path in ("/docs", "/openapi.json", "/redoc"):
        assert remote.get(path).status_code == 404
    assert TestClient(create_app(GatewaySettings(api_keys=(KEY,), docs=True))).get("/openapi.json").status_code == 200


def test_a_client_that_disconnects_frees_its_place() -> None:
    """Straight at the ASGI app: a queued request whose client leaves stops counting against the queue."""
    release = threading.Event()

    def slow(q: str) -> Answer:
        release.wait(10)
        return served(result())

    app = create_app(GatewaySettings(api_keys=(KEY,), max_concurrency=1, max_queue=1), _holder(StandInEngine(slow)))
    gateway = app.state.gateway
    body = json.dumps({"model": "escalate-cascade", "messages": [{"role": "user", "content": QUESTION}]}).encode()
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
             "query_string": b"", "headers": [(b"authorization", f"Bearer {KEY}".encode()),
                                               (b"content-type", b"application/json")],
             "client": ("127.0.0.1", 1), "server": ("test", 80), "scheme": "http", "http_version": "1.1",
             "root_path": ""}

    async def request(leave: anyio.Event, statuses: list[int]) -> None:
        sent = False

        async def receive() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await leave.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await app(scope, receive, send)

    async def main() -> list[int]:
        stays, leaves, statuses = anyio.Event(), anyio.Event(), []
        async with anyio.create_task_group() as group:
            group.start_soon(request, stays, statuses)  # answering (blocked in the engine)
            group.start_soon(request, leaves, statuses)  # waiting for the worker
            with anyio.fail_after(5):
                while gateway.admitted < 2:
                    await anyio.sleep(0.01)
            leaves.set()
            with anyio.fail_after(5):
                while gateway.admitted > 1:
                    await anyio.sleep(0.01)
            release.set()  # the first is answered; its client never leaves
        return statuses

    assert sorted(anyio.run(main)) == [200, 499]
    assert gateway.admitted == 0


def _holder(engine: Any) -> EngineHolder:
    holder = EngineHolder()
    holder.swap(engine)
    return holder


class Deployable(StandInEngine):
    def check(self) -> None:
        pass


@pytest.fixture
def admin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[TestClient, Path]:
    """A gateway with an admin key and serving/ under tmp_path; loading a deployment opens a stand-in engine."""
    serving = tmp_path / "serving"
    (serving / "d").mkdir(parents=True)
    Deployment("escalate-cascade", "2", "champion", "bundle").save_to(serving / "d")
    monkeypatch.setattr(gateway_module, "open_engine", lambda deployment: Deployable(version=deployment.version))
    settings = GatewaySettings(api_keys=(KEY,), admin_keys=("admin-key",), serving_dir=str(serving))
    return TestClient(create_app(settings, _holder(StandInEngine())), raise_server_exceptions=False), serving


def deploy(c: TestClient, path: str, key: str = "admin-key") -> Any:
    return c.post("/admin/deploy", json={"deployment": path}, headers={"Authorization": f"Bearer {key}"})


def test_admin_is_off_without_an_admin_key_and_refuses_the_client_key(admin: tuple[TestClient, Path]) -> None:
    r = client(StandInEngine()).post("/admin/deploy", json={"deployment": "x"}, headers=AUTH)
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    c, serving = admin
    assert deploy(c, str(serving / "d"), key=KEY).status_code == 401
    with pytest.raises(ValueError, match="no admin key may be a client key"):
        GatewaySettings(api_keys=(KEY,), admin_keys=(KEY,))


def test_admin_deploys_only_regular_files_in_the_serving_dir_and_logs_each(
        admin: tuple[TestClient, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    c, serving = admin
    outside = tmp_path / "elsewhere"
    Deployment("escalate-cascade", "3", "champion", "bundle").save_to(outside)
    (serving / "link").symlink_to(outside, target_is_directory=True)
    os.mkfifo(serving / "fifo.json")
    (serving / "big.json").write_text(" " * 2_000_000)
    (serving / "escape").mkdir()
    Deployment("escalate-cascade", "4", "champion", "../../elsewhere").save_to(serving / "escape")
    caplog.set_level(logging.WARNING, logger="escalate.gateway")
    start = time.monotonic()
    for path in (str(outside), str(serving / "link"), str(serving / "fifo.json"), "/dev/zero", str(serving / "big.json"),
                 str(serving / "escape"), str(serving / ".." / "elsewhere"), "\x00", str(serving / "missing")):
        r = deploy(c, path)
        assert r.status_code == 409 and r.json()["error"]["code"] == "deployment_refused", (path, r.text)
    assert time.monotonic() - start < 5  # the FIFO did not block a worker
    assert deploy(c, "x" * 5000).status_code == 422
    r = deploy(c, str(serving / "d"))
    assert r.status_code == 200 and r.json()["serving"] == "escalate-cascade v2"
    assert chat(c).json()["escalate"]["deployment"]["version"] == "2"
    logged = [m for m in caplog.messages if m.startswith("admin: deploy")]
    assert len(logged) == 10 and "now serving escalate-cascade v2" in logged[-1] and "by key " in logged[-1]
    assert "admin-key" not in caplog.text  # who, by fingerprint: never the key itself


def test_a_deployment_sends_its_own_key_env_not_the_bundles() -> None:
    from escalate.serving.engine import http_overrides

    d = Deployment("m", "1", "champion", "b", endpoints={"slm": "http://127.0.0.1:1", "llm": "http://10.0.0.1"},
                   api_key_env={"slm": "ESCALATE_VLLM_API_KEY"})
    overrides = http_overrides(d)
    assert overrides["slm"]["api_key_env"] == "ESCALATE_VLLM_API_KEY" and overrides["llm"]["api_key_env"] is None
