"""Fuzz the gateway with malformed and hostile requests; none may get a 5xx or see the gateway's internals.

    python bench/gateway_fuzz.py --n 5000 --out bench/results/gateway_fuzz.md     # the app, a stub engine
    make serve && python bench/gateway_fuzz.py --live --n 1000                     # the running gateway

Requests come from tests/gateway_requests.py (hypothesis strategies: wrong types, missing and extra
fields, broken JSON, odd content types, huge numbers, unicode, valid questions longer than the SLM's
context, non-ASCII and binary keys and header values, bad and missing keys, the admin path with
paths outside the serving directory and special files, other paths and methods). By default they
go to the app in this process (FastAPI's TestClient) over a stub engine, so no model server is
needed; --live sends them to the gateway `make serve` started, whose valid requests the real models
answer (a 503 there means a model went down, and counts as a failure too). After the fuzz, one
valid request must still be answered. Writes OUT (markdown) and OUT with .json.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from gateway_requests import QUESTION, StubEngine, internals, raw_requests

from escalate.serving import gateway_process
from escalate.serving.engine import EngineHolder
from escalate.serving.gateway import GatewaySettings, create_app

STUB_KEY, STUB_ADMIN_KEY = "fuzz-key", "fuzz-admin-key"


def stub_client(serving_dir: Path) -> tuple[httpx.Client, str, str, str]:
    holder = EngineHolder()
    holder.swap(StubEngine())
    app = create_app(GatewaySettings(api_keys=(STUB_KEY,), admin_keys=(STUB_ADMIN_KEY,), max_body_bytes=4096,
                                     serving_dir=str(serving_dir)), holder)
    return TestClient(app, raise_server_exceptions=False), STUB_KEY, STUB_ADMIN_KEY, "the app over a stub engine"


def live_client(root: Path) -> tuple[httpx.Client, str, str, str] | None:
    gateway = gateway_process.running(root)
    if gateway is None:
        return None
    client = httpx.Client(base_url=gateway.url, timeout=120)
    return client, gateway_process.api_key(root), gateway_process.admin_key(root), gateway.url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("."))
    parser.add_argument("--n", type=int, default=5000, help="requests to send")
    parser.add_argument("--live", action="store_true", help="fuzz the running gateway instead of the app in process")
    parser.add_argument("--out", type=Path, default=None, help="markdown report (and its .json beside it)")
    args = parser.parse_args(argv)
    logging.getLogger("escalate.gateway").setLevel(logging.ERROR)  # thousands of refused admin requests
    with tempfile.TemporaryDirectory() as serving:
        target = live_client(args.root.resolve()) if args.live else stub_client(Path(serving))
        if target is None:
            print("no running gateway under", args.root.resolve(), "- run `make serve` first", file=sys.stderr)
            return 2
        report = fuzz(*target, args.n)
    lines = [f"# Gateway fuzz: {report['requests']} requests against {report['target']}", "",
             "| status | count |", "|---|---|", *[f"| {s} | {n} |" for s, n in report["statuses"].items()], "",
             f"- admin-path requests: {report['admin_requests']}; with a non-ASCII or binary header value: "
             f"{report['odd_headers']}",
             f"- 5xx responses: {len(report['failures'])} (target 0: {'met' if not report['failures'] else 'missed'})",
             *[f"  - {f}" for f in report["failures"][:10]],
             f"- responses showing internals (URLs, exception text): {len(report['leaks'])}",
             *[f"  - {f}" for f in report["leaks"][:10]],
             f"- a valid request afterwards: HTTP {report['after']}",
             f"- wall time: {report['seconds']:.1f} s"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    return 0 if not report["failures"] and not report["leaks"] and report["after"] == 200 else 1


def fuzz(http: httpx.Client, key: str, admin_key: str, target: str, n: int) -> dict:
    statuses: collections.Counter[int] = collections.Counter()
    failures: list[str] = []
    leaks: list[str] = []
    counts = {"admin": 0, "odd": 0}
    start = time.perf_counter()

    @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(raw_requests(key, admin_key))
    def send(request: tuple[str, str, list[tuple[bytes, bytes]], bytes]) -> None:
        method, path, headers, body = request
        r = http.request(method, path, headers=headers, content=body)
        statuses[r.status_code] += 1
        counts["admin"] += path == "/admin/deploy"
        counts["odd"] += any(not value.isascii() for _, value in headers)
        if r.status_code >= 500 and r.status_code != 503:
            failures.append(f"{method} {path} {body[:120]!r} -> {r.status_code} {r.text[:200]}")
        if internals(r.text):
            leaks.append(f"{method} {path} -> {r.status_code} {r.text[:200]}")

    send()
    after = http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": "escalate", "messages": [{"role": "user", "content": QUESTION}]})
    return {"target": target, "requests": sum(statuses.values()), "statuses": dict(sorted(statuses.items())),
            "admin_requests": counts["admin"], "odd_headers": counts["odd"], "failures": failures, "leaks": leaks,
            "after": after.status_code, "seconds": time.perf_counter() - start}


if __name__ == "__main__":
    sys.exit(main())
