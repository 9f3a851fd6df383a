"""Hypothesis strategies for malformed (and occasionally valid) gateway requests, and the stub engine
that answers the valid ones, shared by tests/test_gateway_fuzz.py and bench/gateway_fuzz.py."""

from __future__ import annotations

import json
from typing import Any

import anyio
from hypothesis import strategies as st

from escalate.cascade import RESULT_FIELDS
from escalate.serving.deployment import Deployment
from escalate.serving.engine import Answer, RequestRejected

QUESTION = "Ben has 3 pens. Then gets 4 more. How many pens does Ben have now?"
# Valid, but longer than a small model's context: its server refuses it (a 4xx), which must stay a 400.
LONG_QUESTION = "Ben has 3 pens. " + "Then gets 4 more. " * 300 + "How many pens does Ben have now?"
PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/admin/deploy", "/ready", "/v1/nothing",
         "/metrics", "/docs", "/openapi.json", "/health")
Headers = list[tuple[bytes, bytes]]
STUB_CONTEXT_CHARS = 2_000

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                         st.floats(allow_nan=False), st.text(max_size=40))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                 st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                           max_leaves=12)


def _message() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "robot", ""]),
                               "content": st.one_of(st.text(max_size=60), st.just(QUESTION), st.just(LONG_QUESTION),
                                                    json_values)}),
        json_values)


def _chat_body() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"model": st.one_of(st.just("escalate-cascade"), st.text(max_size=20), json_scalars)},
        optional={"messages": st.one_of(st.lists(_message(), max_size=3), json_values),
                  "stream": st.one_of(st.booleans(), json_scalars), "n": json_scalars,
                  "max_tokens": json_scalars, "temperature": json_scalars, "top_p": json_scalars,
                  "tools": json_values, "extra": json_values})


def _completion_body() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"model": st.one_of(st.just("escalate-cascade"), json_scalars)},
        optional={"prompt": st.one_of(st.just(QUESTION), st.text(max_size=60), st.lists(st.text(max_size=20), max_size=3),
                                      json_values),
                  "max_tokens": json_scalars, "stream": json_scalars, "n": json_scalars})


def _deploy_body() -> st.SearchStrategy[dict[str, Any]]:
    """/admin/deploy bodies: paths outside the serving directory, special files, over-long and odd paths."""
    paths = st.one_of(st.sampled_from(["/etc/passwd", "/dev/zero", "/dev/stdin", "/proc/self/environ", "../../etc",
                                       "serving/../../x", "/", ".", "", "\x00", "a" * 5000, "/tmp/" + "b" * 300]),
                      st.text(max_size=80), json_scalars)
    return st.fixed_dictionaries({"deployment": paths}, optional={"probe": st.one_of(st.text(max_size=40), json_scalars)})


def _header_value(text: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    return text.map(lambda v: v.encode("utf-8", "surrogatepass"))


def raw_requests(key: str, admin_key: str | None = None) -> st.SearchStrategy[tuple[str, str, Headers, bytes]]:
    """(method, path, headers, body) tuples, mostly malformed; headers are raw bytes, so keys and content
    types can be non-ASCII or binary."""
    bodies = st.one_of(
        _chat_body().map(lambda b: json.dumps(b).encode()),
        _completion_body().map(lambda b: json.dumps(b).encode()),
        _deploy_body().map(lambda b: json.dumps(b).encode()),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=200),
        st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    )
    keys = [f"Bearer {key}"] * 6 + ["Bearer wrong", key, "", "Basic abc", "Bearer", "bearer  " + key + " "]
    admin_keys = [f"Bearer {admin_key}"] * 6 + keys[:8] if admin_key else keys
    odd_keys = st.one_of(_header_value(st.text(max_size=40).map(lambda t: f"Bearer {t}")),  # non-ASCII keys
                         st.binary(max_size=40).map(lambda b: b"Bearer " + b),  # binary keys
                         st.binary(max_size=40))

    def auth(path: str) -> st.SearchStrategy[bytes]:
        return st.one_of(_header_value(st.sampled_from(admin_keys if path == "/admin/deploy" else keys)), odd_keys)

    def body(path: str) -> st.SearchStrategy[bytes]:
        deploys = _deploy_body().map(lambda b: json.dumps(b).encode())
        return st.one_of(deploys, deploys, bodies) if path == "/admin/deploy" else bodies

    content_type = st.one_of(
        _header_value(st.sampled_from(["application/json"] * 3 + ["text/plain", "", "multipart/form-data",
                                                                   "application/json; charset=latin-1"])),
        st.binary(max_size=30), _header_value(st.text(max_size=20)))
    names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20).map(str.encode)  # the client's rule
    extra = st.lists(st.tuples(names, st.binary(max_size=40)), max_size=2)
    def request(path: str) -> st.SearchStrategy[tuple[str, str, Headers, bytes]]:
        headers = st.tuples(auth(path), content_type, extra).map(
            lambda h: [(name, value) for name, value in ((b"authorization", h[0]), (b"content-type", h[1])) if value]
            + [(name, value) for name, value in h[2] if name not in (b"content-length", b"host", b"transfer-encoding")])
        return st.tuples(st.sampled_from(["POST"] * 8 + ["GET", "PUT", "DELETE", "OPTIONS", "HEAD", "PATCH"]),
                         st.just(path), headers, body(path))

    return st.sampled_from(PATHS[:2] * 4 + PATHS[2:4] * 2 + PATHS[4:]).flatmap(request)


def stub_result(question: str) -> dict[str, Any]:
    """A cascade result row for `question`, answered by the SLM."""
    row: dict[str, Any] = dict.fromkeys(RESULT_FIELDS, 0.0)
    row.update(question=question, answer="7", parsed_answer="7", model="slm", escalated=False, confidence=0.9,
               strategy="entropy", threshold=0.5, slm_prompt_tokens=20, slm_output_tokens=2, llm_prompt_tokens=0,
               llm_output_tokens=0)
    return row


class BlockingEngine:
    """A stand-in engine's async face: its blocking `answer` on a worker thread, abandoned when the gateway
    gives up on the request (so a stand-in that sleeps exercises the gateway's queue and deadline)."""

    def answer(self, question: str, budget: Any = None) -> Answer:
        raise NotImplementedError

    async def answer_async(self, question: str, budget: Any = None) -> Answer:
        return await anyio.to_thread.run_sync(self.answer, question, budget, abandon_on_cancel=True)


class StubEngine(BlockingEngine):
    """Duck-types serving.engine.Engine without servers: answers every question with the SLM, except one
    longer than a small model's context, which the SLM's server refuses (as vLLM does: a 4xx)."""

    def __init__(self) -> None:
        self.deployment = Deployment("escalate-cascade", "1", "champion", "/nowhere", served_names={"slm": "v1-slm"})
        self.strategy = "entropy"

    def answer(self, question: str, budget: Any = None) -> Answer:
        if len(question) > STUB_CONTEXT_CHARS:
            raise RequestRejected("slm", 400, "http://127.0.0.1:8001/v1/completions answered HTTP 400: too long")
        return Answer(stub_result(question), None, "v1-slm")

    def slm_skipped(self) -> bool:
        return False

    def reachable(self) -> dict[str, bool]:
        return {"slm": True, "llm": True}

    def close(self) -> None:
        pass


def internals(text: str) -> list[str]:
    """What a response must never show: internal URLs, exception names, tracebacks."""
    return [marker for marker in ("127.0.0.1:8001", "Traceback", "Error:", "Exception") if marker in text]
