"""Hypothesis strategies for malformed (and occasionally valid) gateway requests, shared by
tests/test_gateway_fuzz.py and bench/gateway_fuzz.py."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

QUESTION = "Ben has 3 pens. Then gets 4 more. How many pens does Ben have now?"
PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/admin/deploy", "/ready", "/v1/nothing")

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                         st.floats(allow_nan=False), st.text(max_size=40))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                 st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                           max_leaves=12)


def _message() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "robot", ""]),
                               "content": st.one_of(st.text(max_size=60), st.just(QUESTION), json_values)}),
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


def raw_requests(key: str) -> st.SearchStrategy[tuple[str, str, dict[str, str], bytes]]:
    """(method, path, headers, body) tuples, mostly malformed."""
    bodies = st.one_of(
        _chat_body().map(lambda b: json.dumps(b).encode()),
        _completion_body().map(lambda b: json.dumps(b).encode()),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=200),
        st.text(max_size=200).map(str.encode),
    )
    auth = st.sampled_from([f"Bearer {key}"] * 6 + ["Bearer wrong", key, "", "Basic abc"])
    content_type = st.sampled_from(["application/json", "application/json", "text/plain", "", "multipart/form-data"])
    return st.tuples(
        st.sampled_from(["POST"] * 8 + ["GET", "PUT", "DELETE"]),
        st.sampled_from(PATHS[:2] * 4 + PATHS[2:]), st.tuples(auth, content_type).map(
            lambda h: {k: v for k, v in (("Authorization", h[0]), ("Content-Type", h[1])) if v}),
        bodies)
