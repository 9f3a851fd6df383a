"""Malformed and hostile requests never get a 5xx from the gateway, nor see its internals (a stub engine
answers the valid ones; bench/gateway_fuzz.py sends 5,000)."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from escalate.serving.engine import EngineHolder
from escalate.serving.gateway import GatewaySettings, create_app
from tests.gateway_requests import Headers, StubEngine, internals, raw_requests
from tests.test_gateway import KEY

ADMIN = "admin-key"
holder = EngineHolder()
holder.swap(StubEngine())
SERVING = Path(__file__).resolve().parent / "no-serving-dir"  # nothing to deploy: every deploy is refused
CLIENT = TestClient(create_app(GatewaySettings(api_keys=(KEY,), max_body_bytes=4096, admin_keys=(ADMIN,),
                                               serving_dir=str(SERVING)), holder),
                    raise_server_exceptions=False)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw_requests(KEY, ADMIN))
def test_no_malformed_request_gets_a_5xx(request: tuple[str, str, Headers, bytes]) -> None:
    method, path, headers, body = request
    r = CLIENT.request(method, path, headers=headers, content=body)
    assert r.status_code < 500, (method, path, headers, body[:200], r.status_code, r.text[:300])
    assert not internals(r.text), r.text[:300]
    if r.status_code >= 400 and method != "HEAD":
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
