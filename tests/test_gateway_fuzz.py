"""Malformed requests never get a 5xx from the gateway (a stand-in engine answers the valid ones; the
real-model run of 1,000 requests is bench/gateway_fuzz.py)."""

from __future__ import annotations

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from escalate.serving.engine import EngineHolder
from escalate.serving.gateway import GatewaySettings, create_app
from tests.gateway_requests import raw_requests
from tests.test_gateway import KEY, StandInEngine

holder = EngineHolder()
holder.swap(StandInEngine())
CLIENT = TestClient(create_app(GatewaySettings(api_keys=(KEY,), max_body_bytes=4096), holder),
                    raise_server_exceptions=False)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw_requests(KEY))
def test_no_malformed_request_gets_a_5xx(request: tuple[str, str, dict[str, str], bytes]) -> None:
    method, path, headers, body = request
    if path == "/admin/deploy":  # a valid deploy request would load from disk; its refusals are 409s
        path = "/v1/completions"
    r = CLIENT.request(method, path, headers=headers, content=body)
    assert r.status_code < 500, (method, path, body[:200], r.status_code, r.text[:300])
    if r.status_code >= 400:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
