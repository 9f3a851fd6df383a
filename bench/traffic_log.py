"""What the traffic log costs a request: the enqueue call alone, and a whole request with logging on vs off.

    python bench/traffic_log.py --requests 2000 --out bench/results/traffic_log.md

A stand-in engine answers at once (tests/test_gateway.py's pattern), so the request time is the
gateway's own. The enqueue cost is timed around `TrafficLog.log`, the one call the request path
makes (the writer thread flattens, redacts and writes later); the target is at most 0.2 ms at p50.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ holds the stand-in engine

from escalate.serving.engine import EngineHolder
from escalate.serving.gateway import GatewaySettings, create_app
from escalate.serving.traffic import TrafficLog, part_files, read_parts
from tests.test_gateway import AUTH, KEY, QUESTION, StandInEngine

TARGET_MS = 0.2
BODY = {"model": "escalate-cascade", "messages": [{"role": "user", "content": QUESTION}]}


class TimedLog:
    """Wraps the gateway's traffic log and times each `log` call (the request's whole share of logging)."""

    def __init__(self, inner: TrafficLog) -> None:
        self.inner, self.seconds = inner, []

    def log(self, *args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        self.inner.log(*args, **kwargs)
        self.seconds.append(time.perf_counter() - start)

    def close(self) -> None:
        self.inner.close()


def run(requests: int, traffic_dir: str | None) -> tuple[list[float], list[float], int]:
    """Request wall times, enqueue times and rows written, for `requests` chat completions."""
    holder = EngineHolder()
    holder.swap(StandInEngine())
    app = create_app(GatewaySettings(api_keys=(KEY,), traffic_dir=traffic_dir), holder)
    timed = TimedLog(app.state.gateway.traffic) if traffic_dir else None
    if timed:
        app.state.gateway.traffic = timed
    walls = []
    with TestClient(app) as client:
        for _ in range(50):  # warm-up
            client.post("/v1/chat/completions", json=BODY, headers=AUTH)
        for _ in range(requests):
            start = time.perf_counter()
            assert client.post("/v1/chat/completions", json=BODY, headers=AUTH).status_code == 200
            walls.append(time.perf_counter() - start)
        if timed:
            timed.close()
    written = len(read_parts(part_files(traffic_dir))) if traffic_dir else 0
    return walls, timed.seconds[50:] if timed else [], written


def ms(values: list[float], q: float) -> float:
    return float(np.quantile(values, q)) * 1000 if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("bench/results/traffic_log.md"))
    args = parser.parse_args()
    off, _, _ = run(args.requests, None)
    with tempfile.TemporaryDirectory() as tmp:
        on, enqueue, written = run(args.requests, tmp)
    p50 = ms(enqueue, 0.5)
    lines = [
        "# Traffic log: cost per request", "",
        f"{args.requests} chat completions through the gateway (stand-in engine, TestClient, one client); "
        f"`python bench/traffic_log.py --requests {args.requests}`.", "",
        "| | p50 ms | p95 ms | p99 ms |", "|---|---|---|---|",
        f"| enqueue (`TrafficLog.log`) | {p50:.4f} | {ms(enqueue, 0.95):.4f} | {ms(enqueue, 0.99):.4f} |",
        f"| request, logging off | {ms(off, 0.5):.3f} | {ms(off, 0.95):.3f} | {ms(off, 0.99):.3f} |",
        f"| request, logging on | {ms(on, 0.5):.3f} | {ms(on, 0.95):.3f} | {ms(on, 0.99):.3f} |", "",
        f"Rows written: {written} of {args.requests + 50} answered (warm-up included). "
        f"Request p50 difference on - off: {(statistics.median(on) - statistics.median(off)) * 1000:+.3f} ms "
        "(the writer thread shares the CPU with the requests).", "",
        f"Target: enqueue p50 <= {TARGET_MS} ms: **{'met' if p50 <= TARGET_MS else 'MISSED'}**.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if p50 <= TARGET_MS and written == args.requests + 50 else 1


if __name__ == "__main__":
    sys.exit(main())
