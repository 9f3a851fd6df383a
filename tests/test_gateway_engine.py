"""The real engine behind the real app, its models on fake OpenAI servers: a refused prompt is that
request's 400, missing log-probabilities escalate, a frozen SLM is bypassed within its share of the
deadline, and /ready says whether any model answers."""

from __future__ import annotations

import json
import math
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient

from escalate.cascade import Cascade
from escalate.config import SamplingConfig
from escalate.evaluation.cost import TokenPriceCost
from escalate.models.backends.openai_http import OpenAIBackend
from escalate.registry.bundle import BundleError
from escalate.routers.entropy import EntropyRouter
from escalate.routers.registry import ROUTERS, make_router
from escalate.serving.deployment import Deployment
from escalate.serving.engine import Engine, EngineHolder, http_overrides, logprobs_asked
from escalate.serving.gateway import GatewaySettings, create_app
from tests.test_gateway import AUTH, KEY
from tests.test_openai_http import FakeServer, Reply, completion, free_port, ok, serve

SHORT, LONG = "Ben has 3 pens. How many pens?", "Ben has 3 pens. " * 50 + "How many pens?"
COST = TokenPriceCost({"slm": (0.05, 0.1), "llm": (1.0, 2.0)})


def gateway(slm: str, llm: str, **settings: Any) -> tuple[TestClient, Engine]:
    """mean_logprob at threshold 0.1: the fake servers' answers (mean P(T) 0.28) stay with the SLM."""
    backends = [OpenAIBackend(url, role, timeout_s=30, top_logprobs=2) for url, role in ((slm, "slm"), (llm, "llm"))]
    cascade = Cascade(*backends, make_router("mean_logprob"), 0.1, COST, SamplingConfig(k=1, max_new_tokens=4))
    deployment = Deployment("escalate-cascade", "1", "champion", "/nowhere", endpoints={"slm": slm, "llm": llm},
                            served_names={"slm": "slm", "llm": "llm"})
    engine = Engine(deployment, cascade=cascade)
    holder = EngineHolder()
    holder.swap(engine)
    return TestClient(create_app(GatewaySettings(api_keys=(KEY,), **settings), holder)), engine


def ask(c: TestClient, question: str = SHORT) -> Any:
    return c.post("/v1/chat/completions", headers=AUTH,
                  json={"model": "escalate-cascade", "messages": [{"role": "user", "content": question}]})


@contextmanager
def frozen() -> Iterator[str]:
    """A server that accepts connections and never answers, as a SIGSTOPped vLLM does."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_a_prompt_the_slm_refuses_is_that_requests_400_and_the_slm_stays_up() -> None:
    def context_limit(body: dict[str, Any]) -> Reply:
        if len(body["prompt"]) > 200:
            return 400, b'{"error": "This model\'s maximum context length is 64 tokens"}'
        return ok(body)

    with serve(FakeServer(context_limit)) as slm, serve(FakeServer(ok)) as llm:
        c, engine = gateway(slm, llm)
        r = ask(c, LONG)
        assert r.status_code == 400 and r.json()["error"]["code"] == "model_rejected_request"
        assert "127.0.0.1" not in r.text and not engine.slm_skipped()
        r = ask(c)
        assert r.status_code == 200 and r.json()["escalate"]["model"] == "slm"
        engine.close()


def test_missing_or_null_logprobs_escalate_and_leave_the_slm_up() -> None:
    def no_logprobs(body: dict[str, Any]) -> Reply:
        reply = completion(body)
        del reply["choices"][0]["logprobs"]
        return 200, json.dumps(reply).encode()

    def null_logprobs(body: dict[str, Any]) -> Reply:
        reply = completion(body)
        reply["choices"][0]["logprobs"]["token_logprobs"] = [None, None]
        return 200, json.dumps(reply).encode()

    for reply, fallback in ((no_logprobs, "slm_unscored"), (null_logprobs, None)):
        with serve(FakeServer(reply)) as slm, serve(FakeServer(ok)) as llm:
            c, engine = gateway(slm, llm)
            e = ask(c).json()["escalate"]
            assert (e["model"], e["escalated"], e["fallback"], e["confidence"]) == ("llm", True, fallback, None)
            assert not engine.slm_skipped()  # one answer without scores does not switch the SLM off
            engine.close()


def test_a_frozen_slm_is_bypassed_within_its_share_of_the_deadline() -> None:
    with frozen() as slm, serve(FakeServer(ok)) as llm:
        c, engine = gateway(slm, llm, deadline_s=2.0, slm_share=0.25)
        start = time.monotonic()
        r = ask(c)
        assert r.status_code == 200 and time.monotonic() - start < 1.5
        assert (r.json()["escalate"]["model"], r.json()["escalate"]["fallback"]) == ("llm", "slm_down")
        start = time.monotonic()
        assert ask(c).json()["escalate"]["fallback"] == "slm_down" and time.monotonic() - start < 0.4  # bypassed
        engine.close()


def test_nothing_answering_in_time_is_504_and_a_dead_llm_503_both_without_urls() -> None:
    with frozen() as slm, frozen() as llm:
        c, engine = gateway(slm, llm, deadline_s=1.0, slm_share=0.5)
        start = time.monotonic()
        r = ask(c)
        assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"
        assert time.monotonic() - start < 2.5
        engine.close()
    with serve(FakeServer(ok)) as slm:
        c, engine = gateway(slm, f"http://127.0.0.1:{free_port()}", slm_share=0.5)
        r = ask(c, LONG)  # mean_logprob keeps it; the LLM is not needed
        assert r.status_code == 200
        engine.cascade.threshold = math.inf  # now every question needs the LLM
        r = ask(c)
        assert r.status_code == 503 and r.json()["error"]["code"] == "llm_unavailable"
        assert r.headers["retry-after"] == "5" and "127.0.0.1" not in r.text
        engine.close()


def test_ready_is_503_when_no_model_is_reachable() -> None:
    c, engine = gateway(f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}/v1")
    r = c.get("/ready")
    assert r.status_code == 503 and r.json()["reachable"] == {"slm": False, "llm": False}
    assert r.headers["retry-after"]
    engine.close()
    with serve(FakeServer(ok)) as llm:
        c, engine = gateway(f"http://127.0.0.1:{free_port()}", llm + "/v1")
        body = c.get("/ready").json()
        assert body["ready"] and body["reachable"] == {"slm": False, "llm": True} and body["slm_bypassed"]
        engine.close()


def test_the_engine_asks_the_slm_for_what_its_router_reads_and_the_llm_for_one() -> None:
    """Every alternative asked is parsed on every request: entropy asks its top k, P(T) and the log-probability
    routers 1, a router that reads none still 1 (token counts come with them); "full" asks the server's limit."""
    d = Deployment("m", "1", "champion", "b", endpoints={"slm": "http://127.0.0.1:1", "llm": "http://127.0.0.1:2"},
                   top_logprobs={"slm": 400, "llm": 400})
    asked = {name: {role: o["top_logprobs"] for role, o in http_overrides(d, make_router(name)).items()}
             for name in ("entropy", "mean_logprob", "p_true_token", "prompt_length", "self_consistency")}
    assert asked == {"entropy": {"slm": EntropyRouter.top_logprobs_needed, "llm": 1}, "mean_logprob": {"slm": 1, "llm": 1},
                     "p_true_token": {"slm": 1, "llm": 1}, "prompt_length": {"slm": 1, "llm": 1},
                     "self_consistency": {"slm": 1, "llm": 1}}
    assert 1 < EntropyRouter.top_logprobs_needed < 400
    assert logprobs_asked(make_router("entropy"), "slm", 5) == 5  # never above what the server gives
    assert logprobs_asked(make_router("sater_vote"), "slm", 400) == 400  # a router that does not say: all of them
    assert {r: o["top_logprobs"] for r, o in http_overrides(d).items()} == {"slm": 400, "llm": 400}
    d.logprobs = "full"
    assert {r: o["top_logprobs"] for r, o in http_overrides(d, make_router("entropy")).items()} == {"slm": 400, "llm": 400}
    d.logprobs = "some"
    with pytest.raises(BundleError, match="logprobs"):
        http_overrides(d, make_router("entropy"))


def test_every_router_says_how_many_alternatives_it_reads() -> None:
    for name, cls in ROUTERS.items():
        need = cls.top_logprobs_needed
        assert need is None or (isinstance(need, int) and need >= 0), name
    reads_text_only = ("random", "prompt_length", "embedding_lr", "embedding_knn", "embedding_mlp",
                       "embedding_features", "pik_probe", "self_consistency")
    assert all(ROUTERS[name].top_logprobs_needed == 0 for name in reads_text_only)
