"""Fuzz the running gateway with malformed requests; none may get a 5xx.

    make serve
    python bench/gateway_fuzz.py --n 1000 --out bench/results/gateway_fuzz.md

Requests come from tests/gateway_requests.py (hypothesis strategies: wrong types, missing and extra
fields, broken JSON, odd content types, huge numbers, unicode, bad and missing keys, other paths
and methods). A valid request among them is answered by the real models, so a 503 would mean a
model went down and is counted as a failure too.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import httpx
from hypothesis import HealthCheck, Phase, given, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from gateway_requests import raw_requests

from escalate.serving import gateway_process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("."))
    parser.add_argument("--n", type=int, default=1000, help="requests to send")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    root = args.root.resolve()
    gateway = gateway_process.running(root)
    if gateway is None:
        print("no running gateway under", root, "- run `make serve` first", file=sys.stderr)
        return 2
    key = gateway_process.api_key(root)
    statuses: collections.Counter[int] = collections.Counter()
    failures: list[str] = []
    http = httpx.Client(base_url=gateway.url, timeout=120)

    @settings(max_examples=args.n, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(raw_requests(key))
    def send(request: tuple[str, str, dict[str, str], bytes]) -> None:
        method, path, headers, body = request
        r = http.request(method, path, headers=headers, content=body)
        statuses[r.status_code] += 1
        if r.status_code >= 500:
            failures.append(f"{method} {path} {body[:120]!r} -> {r.status_code} {r.text[:200]}")

    send()
    total = sum(statuses.values())
    lines = [f"# Gateway fuzz: {total} requests against {gateway.url}", "",
             "| status | count |", "|---|---|", *[f"| {s} | {n} |" for s, n in sorted(statuses.items())], "",
             f"- 5xx responses: {len(failures)} (target 0: {'met' if not failures else 'missed'})",
             *[f"  - {f}" for f in failures[:10]]]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
