"""Load on the gateway: N concurrent clients for T seconds; the latency the gateway adds, and errors.

    make serve                                   # a deployment behind a running gateway
    python bench/gateway_load.py --clients 50 --seconds 60 --out bench/results/gateway_load.md

Each client alternates a request through the gateway with the same prompt sent straight to the
SLM's vLLM server, so both see the same load at the same moments. The gateway's added latency is
measured two ways:
- per request: the client's wall time minus the time the gateway itself spent waiting on vLLM
  (the `escalate.latency_s` it returns): everything the gateway does besides generating;
- side by side: the gateway's latency percentiles beside the direct requests' (this includes the
  cascade's extra work, e.g. an LLM call for an escalated question).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from escalate.serving import gateway_process
from escalate.serving.deployment import current

OWN_SHARE_TARGET = 0.05
PROMPTS = ["Ben has 3 pens. Then gets 4 more. How many pens does Ben have now?",
           "Eva has 7 cups. Then gives away 1. How many cups does Eva have now?",
           "Tom has 12 apples. Then buys 9 more. Then gives away 4. How many apples does Tom have now?"]


async def client_loop(i: int, gateway: str, direct: str, slm_name: str, key: str, vllm_key: str, model: str,
                      max_tokens: int, stop_at: float, out: dict[str, list]) -> None:
    headers, direct_headers = {"Authorization": f"Bearer {key}"}, {"Authorization": f"Bearer {vllm_key}"}
    async with httpx.AsyncClient(timeout=120) as http:
        n = 0
        while time.monotonic() < stop_at:
            prompt = PROMPTS[(i + n) % len(PROMPTS)]
            n += 1
            start = time.perf_counter()
            try:
                r = await http.post(f"{gateway}/v1/completions", headers=headers,
                                    json={"model": model, "prompt": prompt})
                wall = time.perf_counter() - start
                if r.status_code != 200:
                    out["errors"].append(f"gateway {r.status_code}: {r.text[:200]}")
                else:
                    lat = r.json()["escalate"]["latency_s"]
                    out["gateway"].append(wall)
                    out["added"].append(wall - lat["slm"] - lat["llm"])
                    out["escalated"].append(r.json()["escalate"]["escalated"])
            except httpx.HTTPError as exc:
                out["errors"].append(f"gateway {type(exc).__name__}")
            start = time.perf_counter()
            try:
                r = await http.post(f"{direct}/v1/completions", headers=direct_headers, json={
                    "model": slm_name, "prompt": f"Question: {prompt}\nAnswer:", "max_tokens": max_tokens,
                    "temperature": 0, "logprobs": 5})
                if r.status_code == 200:
                    out["direct"].append(time.perf_counter() - start)
                else:
                    out["errors"].append(f"direct {r.status_code}: {r.text[:200]}")
            except httpx.HTTPError as exc:
                out["errors"].append(f"direct {type(exc).__name__}")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1000) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("."))
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=None, help="write the result as Markdown here")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    gateway, deployment = gateway_process.running(root), current(root)
    if gateway is None or deployment is None:
        print("no running gateway with a deployment under", root, "- run `make serve` first", file=sys.stderr)
        return 2
    spec = deployment.read()[0]
    out: dict[str, list] = {"gateway": [], "direct": [], "added": [], "escalated": [], "errors": []}
    stop_at = time.monotonic() + args.seconds
    start = time.perf_counter()

    async def run() -> None:
        await asyncio.gather(*(client_loop(i, gateway.url, deployment.endpoints["slm"], deployment.served_names["slm"],
                                           gateway_process.api_key(root), gateway_process.vllm_key(root),
                                           deployment.model_name,
                                           spec.sampling.max_new_tokens, stop_at, out) for i in range(args.clients)))

    asyncio.run(run())
    elapsed = time.perf_counter() - start
    rows = [("gateway (whole cascade)", out["gateway"]), ("vLLM SLM directly", out["direct"]),
            ("gateway's own time per request", out["added"])]
    lines = [f"# Gateway load: {args.clients} clients, {args.seconds:.0f} s, deployment {deployment.label} "
             f"(strategy {spec.strategy}, profile {spec.profile})", "",
             "| measure | requests | p50 ms | p90 ms | p99 ms | mean ms |", "|---|---|---|---|---|---|"]
    for name, values in rows:
        lines.append(f"| {name} | {len(values)} | {pct(values, 50):.2f} | {pct(values, 90):.2f} | {pct(values, 99):.2f} "
                     f"| {statistics.fmean(values) * 1000 if values else float('nan'):.2f} |")
    escalated = float(np.mean(out["escalated"])) if out["escalated"] else float("nan")
    share = pct(out["added"], 50) / pct(out["gateway"], 50)
    lines += ["", f"- throughput through the gateway: {len(out['gateway']) / elapsed:.1f} requests/s; "
                  f"escalated: {escalated:.1%}",
              f"- the gateway's own p50 is {share:.1%} of its end-to-end p50",
              f"- errors: {len(out['errors'])}" + (f" (first: {out['errors'][0]})" if out["errors"] else ""),
              f"- target (issue 21, real model servers): own time <= {OWN_SHARE_TARGET:.0%} of the end-to-end p50, "
              "0 errors: " + ("met" if share <= OWN_SHARE_TARGET and not out["errors"] else "missed")]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
