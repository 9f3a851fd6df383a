"""The gateway's HTTP contract, around a stand-in engine (the real engine is tested end to end in
test_serving_e2e.py): auth, OpenAI error bodies and codes, streaming, limits, model-down handling,
metrics and the no-drop swap."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from escalate.cascade import RESULT_FIELDS
from escalate.serving.deployment import Deployment
from escalate.serving.engine import Answer, EngineHolder, ModelDown
from escalate.serving.gateway import GatewaySettings, create_app

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
QUESTION = "Eva has 7 cups. Then gives away 1. How many cups does Eva have now?"


def result(model: str = "slm", answer: str = "6") -> dict[str, Any]:
    row = dict.fromkeys(RESULT_FIELDS, 0.0)
    row.update(question=QUESTION, answer=answer, parsed_answer=answer, model=model, escalated=model == "llm",
               confidence=0.91, strategy="entropy", threshold=0.5, cost_slm=1.5, cost=1.5 + (20.0 if model == "llm" else 0),
               cost_llm=20.0 if model == "llm" else 0.0, slm_prompt_tokens=30, slm_output_tokens=3,
               llm_prompt_tokens=30 if model == "llm" else 0, llm_output_tokens=3 if model == "llm" else 0,
               latency_slm_s=0.01, latency_llm_s=0.05 if model == "llm" else 0.0)
    return row


SERVED = {"slm": "v1-slm", "llm": "v1-llm"}


def served(row: dict[str, Any], fallback: str | None = None) -> Answer:
    """An answer as the HTTP engine gives it: served by the vLLM server of the model that answered."""
    return Answer(row, fallback, SERVED[row["model"]])


class StandInEngine:
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


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}])
def test_missing_or_wrong_key_is_401(headers: dict[str, str]) -> None:
    r = client(StandInEngine()).post("/v1/chat/completions", headers=headers,
                                     json={"model": "escalate-cascade", "messages": [{"role": "user", "content": "q"}]})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"model": "escalate-cascade", "messages": []}, 422, "messages"),
    ({"model": "escalate-cascade", "messages": [{"role": "user", "content": QUESTION}], "n": 3}, 422, "n"),
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
