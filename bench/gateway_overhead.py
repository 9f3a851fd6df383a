"""The gateway's own time per request, with the models taken out: a stub OpenAI server that answers at once.

    python bench/gateway_overhead.py --strategy entropy --label after      # 15 s per cell
    python bench/gateway_overhead.py entropy-error                          # top-k entropy against the full vocabulary

One stub process (uvicorn on 127.0.0.1) serves both models' /v1/completions instantly with a body shaped
like vLLM's under `--return-tokens-as-token-ids`: 96 output tokens, each with as many `top_logprobs` as
the request asks for (400, the zoo's whole vocabulary, is what a deployment asks today). A second process
runs the real gateway app (create_app) over a real Engine and a query-level Cascade pointed at the stub.
Then 1 and 50 concurrent clients (httpx async) send requests for a fixed time, first to the gateway, then
the same request the gateway's SLM backend sends straight to the stub.

The gateway's own time is measured two ways, per cell:
- `own_*_ms`: per gateway request, the client's wall time minus the time the gateway's backends spent in
  their HTTP calls to the stub (`escalate.latency_s.slm + .llm`, each the wall time of one `httpx` post):
  everything the gateway does besides waiting on a model (HTTP in and out, the worker thread, the cascade,
  the router, parsing the stub's body);
- `minus_stub_p50_ms`: the gateway's p50 minus the stub's p50 at the same concurrency. The default
  threshold (-inf: nothing escalates) makes each gateway request exactly one stub call, so this is the
  side-by-side difference for the same calls.
`router_p50_ms` is the router's own wall time (`escalate.latency_s.router`): for an embedding or probe
strategy, its model's inference. Every cell records the load average (1 min) before and after it: this
machine's cores are shared, so compare figures taken at similar load.

Results merge into bench/results/gateway_overhead.json under "<label>:<strategy>:<top_logprobs>" and the
Markdown table is rewritten from all runs there.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import uvicorn

from escalate.cascade import Cascade
from escalate.config import SamplingConfig
from escalate.evaluation.cost import TokenPriceCost
from escalate.models.backends.openai_http import OpenAIBackend, top_k_entropies
from escalate.prompts import format_prompt
from escalate.routers.base import RouterInputs
from escalate.routers.learned import ClassifierRouter
from escalate.routers.registry import make_router
from escalate.serving.deployment import Deployment
from escalate.serving.engine import Engine, EngineHolder, logprobs_asked
from escalate.serving.gateway import GatewaySettings, create_app

OUT = Path("bench/results/gateway_overhead")
KEY = "bench-key"
N_TOKENS = 96  # the tiny profile's max_new_tokens
VOCAB = 400  # the tiny zoo's vocabulary: what a deployment asks for today
SENT = itertools.count()  # request numbers, never reused across cells (warm-up included): every question is new
QUESTIONS = ["Ben has 3 pens. Then gets 4 more. How many pens does Ben have now?",
             "Eva has 7 cups. Then gives away 1. How many cups does Eva have now?",
             "Tom has 12 apples. Then buys 9 more. Then gives away 4. How many apples does Tom have now?"]


# ---- the stub model server -------------------------------------------------------------------------------------

def stub_completion(model: str, top_logprobs: int, n_tokens: int = N_TOKENS, seed: int = 0) -> dict[str, Any]:
    """A vLLM-shaped completion: token ids as `token_id:<id>`, peaked softmaxes over the vocabulary."""
    rng = np.random.default_rng(seed)
    pieces = [" The", " answer", " is", " 7", "."] + [" ok"] * (n_tokens - 5)
    tokens, token_lps, steps, offsets, at = [], [], [], [], 0
    for piece in pieces:
        logits = rng.normal(0.0, 3.0, VOCAB)
        logprobs = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
        order = np.argsort(-logprobs)
        tokens.append(f"token_id:{order[0]}")
        token_lps.append(float(logprobs[order[0]]))
        steps.append({f"token_id:{i}": float(logprobs[i]) for i in order[:top_logprobs]})
        offsets.append(at)
        at += len(piece)
    return {"id": "cmpl-stub", "object": "text_completion", "created": 0, "model": model,
            "choices": [{"index": 0, "text": "".join(pieces), "finish_reason": "length",
                         "logprobs": {"text_offset": offsets, "token_logprobs": token_lps, "tokens": tokens,
                                      "top_logprobs": steps}}],
            "usage": {"prompt_tokens": 24, "completion_tokens": n_tokens, "total_tokens": 24 + n_tokens}}


def stub_app() -> Any:
    """A raw ASGI app (no framework: the stub should cost as little as possible); bodies cached per request shape."""
    bodies: dict[tuple[str, int, int], bytes] = {}

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["method"] == "GET":
            status, payload = (200 if scope["path"] == "/health" else 404), b""
        else:
            request = json.loads(raw)
            shape = (request["model"], int(request.get("logprobs") or 1), min(int(request["max_tokens"]), N_TOKENS))
            if shape not in bodies:
                bodies[shape] = json.dumps(stub_completion(*shape)).encode()
            status, payload = 200, bodies[shape]
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})

    return app


# ---- the gateway under test ------------------------------------------------------------------------------------

def gateway_app(stub: str, strategy: str, threshold: float, top_logprobs: str,
                settings: dict[str, Any] | None = None) -> Any:
    """The real app over a real Engine and a query-level Cascade whose two models are the stub; `settings`:
    more GatewaySettings fields (bench/traffic_load.py turns the traffic log on)."""
    router = make_router(strategy)
    if isinstance(router, ClassifierRouter):  # embedding and prompt-length routers: fitted on made-up labels
        router.fit(calibration(40))
    asked = asked_per_role(router, top_logprobs)
    backends = [OpenAIBackend(stub, role, timeout_s=60, top_logprobs=asked[role]) for role in ("slm", "llm")]
    cost = TokenPriceCost({"slm": (0.05, 0.1), "llm": (1.0, 2.0)})
    cascade = Cascade(*backends, router, threshold, cost, SamplingConfig(k=1, max_new_tokens=N_TOKENS))
    deployment = Deployment("escalate-cascade", "1", "bench", "/nowhere", endpoints={"slm": stub, "llm": stub},
                            served_names={"slm": "slm", "llm": "llm"})
    holder = EngineHolder()
    holder.swap(Engine(deployment, cascade=cascade))
    return create_app(GatewaySettings(api_keys=(KEY,), max_queue=128, deadline_s=120.0, **(settings or {})), holder)


def calibration(n: int) -> RouterInputs:
    """Questions of varied length with alternating labels: enough to fit a classifier whose scores are timed,
    not judged."""
    questions = pd.DataFrame({"id": [f"c{i}" for i in range(n)], "split": "calib", "choices": None,
                              "question": [QUESTIONS[i % len(QUESTIONS)] + " Then adds 1." * (i % 7) for i in range(n)]})
    samples = pd.DataFrame({"id": questions["id"], "sample_idx": 0, "correct": [i % 2 == 0 for i in range(n)]})
    return RouterInputs(questions, samples)


def asked_per_role(router: Any, top_logprobs: str) -> dict[str, int]:
    """A number: that many from both models (how deployments asked before routers declared their need);
    "strategy" or "full": what the engine asks (serving.engine.logprobs_asked) of a 400-token server."""
    if top_logprobs.isdigit():
        return {"slm": int(top_logprobs), "llm": int(top_logprobs)}
    return {role: logprobs_asked(router, role, VOCAB, top_logprobs) for role in ("slm", "llm")}


def serve(kind: str, port: int, argv: list[str]) -> int:
    """Run the stub or the gateway in this process (a child of the benchmark)."""
    if kind == "stub":
        app = stub_app()
    else:
        args = argparse.Namespace(**json.loads(argv[0]))
        app = gateway_app(args.stub, args.strategy, args.threshold, args.top_logprobs, getattr(args, "settings", None))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(kind: str, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--port", str(port), *extra])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"the {kind} did not start on {url}")


# ---- the clients -----------------------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """A process's user + system CPU time so far (Linux /proc): the server's own work, whatever else shares the cores."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def cell(url: str, body: Any, clients: int, seconds: float, headers: dict[str, str], gateway: bool = True,
               server_pid: int | None = None) -> dict[str, Any]:
    """`clients` loops posting for `seconds`: per request its wall time and the gateway's escalate object, and the
    CPU time the server (`server_pid`) spent per answered request."""
    walls: list[float] = []
    own: list[float] = []
    router: list[float] = []
    calls: list[int] = []
    errors: list[str] = []
    stop_at = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(timeout=300, limits=limits, headers=headers) as http:
        async def loop() -> None:
            while time.monotonic() < stop_at:
                n = next(SENT)
                start = time.perf_counter()
                try:
                    r = await http.post(url, json=body(n))
                except httpx.HTTPError as exc:
                    errors.append(type(exc).__name__)
                    continue
                wall = time.perf_counter() - start
                if r.status_code != 200:
                    errors.append(f"{r.status_code}: {r.text[:120]}")
                    continue
                walls.append(wall)
                if gateway:  # the stub's body is not parsed: its time is the stub's and the transfer's only
                    e = r.json()["escalate"]
                    lat = e["latency_s"]
                    own.append(wall - lat["slm"] - lat["llm"])
                    router.append(lat["router"])
                    calls.append(1 + int(e["escalated"]))

        load = os.getloadavg()[0]
        begun, cpu = time.perf_counter(), cpu_seconds(server_pid) if server_pid else math.nan
        await asyncio.gather(*(loop() for _ in range(clients)))
        elapsed = time.perf_counter() - begun
        cpu = (cpu_seconds(server_pid) - cpu) if server_pid else math.nan
    out = {"requests": len(walls), "p50_ms": pct(walls, 50), "p99_ms": pct(walls, 99),
           "rps": round(len(walls) / elapsed, 1), "errors": len(errors),
           "load_avg": [round(load, 2), round(os.getloadavg()[0], 2)]}
    if server_pid and walls:
        out["server_cpu_ms"] = round(cpu / len(walls) * 1000, 3)
    if errors:
        out["first_error"] = errors[0]
    if own:
        out |= {"own_p50_ms": pct(own, 50), "own_p99_ms": pct(own, 99), "router_p50_ms": pct(router, 50),
                "stub_calls_per_request": round(float(np.mean(calls)), 3)}
    return out


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)) * 1000, 2) if values else math.nan


def run(strategy: str, threshold: float, top_logprobs: str, seconds: float, client_counts: list[int]) -> dict:
    stub, stub_url = start("stub")
    gateway = None
    try:
        spec = {"stub": stub_url, "strategy": strategy, "threshold": threshold, "top_logprobs": top_logprobs}
        gateway, gateway_url = start("gateway", json.dumps(spec))
        asked = asked_per_role(make_router(strategy), top_logprobs)["slm"]

        def question(n: int) -> str:  # each one new, as traffic is: a router's memo (embeddings) does not hide its model
            return f"{QUESTIONS[n % len(QUESTIONS)]} (request {n})"

        def to_gateway(n: int) -> dict:
            return {"model": "escalate", "prompt": question(n)}

        def to_stub(n: int) -> dict:  # what the gateway's SLM backend sends for the same question
            return {"model": "slm", "prompt": format_prompt(question(n)), "max_tokens": N_TOKENS,
                    "temperature": 0.0, "top_p": 1.0, "n": 1, "seed": 0, "logprobs": asked}

        result: dict[str, Any] = {"strategy": strategy, "threshold": threshold, "top_logprobs": top_logprobs,
                                  "asked": asked_per_role(make_router(strategy), top_logprobs),
                                  "seconds_per_cell": seconds, "clients": {}, "stub": {}}
        auth = {"Authorization": f"Bearer {KEY}"}
        for clients in client_counts:
            asyncio.run(cell(f"{gateway_url}/v1/completions", to_gateway, 1, 2.0, auth))  # warm-up, not recorded
            g = asyncio.run(cell(f"{gateway_url}/v1/completions", to_gateway, clients, seconds, auth,
                                 server_pid=gateway.pid))
            s = asyncio.run(cell(f"{stub_url}/v1/completions", to_stub, clients, seconds, {}, gateway=False,
                                 server_pid=stub.pid))
            g["minus_stub_p50_ms"] = round(g["p50_ms"] - s["p50_ms"], 2)
            result["clients"][str(clients)], result["stub"][str(clients)] = g, s
            print(f"{strategy} k={top_logprobs} clients={clients}: gateway {g} | stub {s}", flush=True)
        result["load_avg"] = round(os.getloadavg()[0], 2)
        return result
    finally:
        for proc in (gateway, stub):
            if proc is not None:
                proc.terminate()
                proc.wait(10)


# ---- the entropy router's top-k approximation -----------------------------------------------------------------

def entropy_error(ks: list[int], temperatures: list[float], n: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """|top-k entropy − full-vocabulary entropy| per token (nats) on synthetic softmaxes over the zoo's 400 tokens.

    Logits are Gaussian (σ 1 to 8: near-uniform to sharply peaked) or Zipf-shaped (−α·log rank), the
    shapes a small LM's next-token distributions span; each is divided by the temperature first.
    """
    rng = np.random.default_rng(seed)
    sigma = rng.uniform(1.0, 8.0, n // 2)[:, None] * rng.normal(size=(n // 2, VOCAB))
    alpha = rng.uniform(0.5, 3.0, n - n // 2)[:, None]
    zipf = -alpha * np.log(np.arange(1, VOCAB + 1)) + rng.normal(0.0, 0.3, (n - n // 2, VOCAB))
    out: dict[str, Any] = {"tokens": n, "vocab": VOCAB, "by_temperature": {}}
    for t in temperatures:
        logits = np.vstack([sigma, zipf]) / t
        lps = logits - logits.max(axis=1, keepdims=True)
        lps -= np.log(np.exp(lps).sum(axis=1, keepdims=True))
        full = -(np.exp(lps) * lps).sum(axis=1)  # as evaluation computes it (models/backends/hf.py)
        order = np.argsort(-lps, axis=1)
        cells = {}
        for k in ks:  # what a server asked for k alternatives returns, through the served code path
            steps = [dict(zip(map(int, idx[:k]), row[idx[:k]].tolist())) for idx, row in zip(order, lps)]
            err = np.abs(top_k_entropies(steps, k) - full)
            cells[str(k)] = {"mean": round(float(err.mean()), 4), "p99": round(float(np.percentile(err, 99)), 4),
                             "max": round(float(err.max()), 4),
                             "mean_where_full_below_1": round(float(err[full < 1.0].mean()), 4)}
        out["by_temperature"][str(t)] = {"full_entropy_p50": round(float(np.median(full)), 3), "error_by_k": cells}
    return out


def entropy_markdown(e: dict[str, Any]) -> str:
    lines = ["", f"## Entropy from the top k alternatives against the full vocabulary ({e['vocab']} tokens)", "",
             f"|top-k entropy − full entropy| per token, nats, over {e['tokens']} synthetic next-token distributions "
             "(Gaussian and Zipf-shaped logits over the zoo's vocabulary; `entropy-error` in the script). A response's "
             "mean entropy (what the entropy router scores) errs by at most its tokens' largest error.", "",
             "| temperature | k | mean | p99 | max | mean where full < 1 nat |", "|---|---|---|---|---|---|"]
    for t, cell in e["by_temperature"].items():
        for k, err in cell["error_by_k"].items():
            lines.append(f"| {t} | {k} | {err['mean']} | {err['p99']} | {err['max']} | {err['mean_where_full_below_1']} |")
    return "\n".join(lines) + "\n"


# ---- the report ------------------------------------------------------------------------------------------------

def markdown(runs: dict[str, dict]) -> str:
    lines = ["# Gateway overhead: the gateway alone, over a stub model server that answers at once", "",
             "`python bench/gateway_overhead.py` (see its docstring). gateway = the client's wall time through the "
             "gateway; stub = the same SLM request sent straight to the stub; own = per gateway request, wall time "
             "minus the time its backends spent in HTTP calls to the stub (`escalate.latency_s.slm + .llm`); "
             "gw − stub = gateway p50 minus stub p50 (threshold −inf: one stub call per request); router = "
             "`escalate.latency_s.router`, the router's own wall time (part of own: an embedding router's MiniLM). "
             "Every question is new (numbered), so no memo hides a router's model (the before, entropy and "
             "mean_logprob rows were taken earlier with 3 repeating questions: nothing on their paths caches). "
             "before = the code before issue 21's items 1-3, asking both models for all 400 alternatives per token; "
             "after = items 1 and 3 (top-k sized to the router), still answering on 8 worker threads with pandas; "
             "async = item 2 (answered on the event loop over an aiohttp pool, scored on plain rows, uvloop and "
             "httptools); strategy = what the router reads. "
             "load = 1-min load average before/after the gateway cell (2 shared cores). "
             "cpu = the server process's CPU time (user + system) per answered request: the gateway's for the "
             "gateway, the stub's for the stub; unlike wall times it does not grow when other work shares the cores "
             "(— where a run predates it).",
             "", "| run | clients | gateway p50 ms | gateway p99 ms | rps | errors | stub p50 ms | stub p99 ms | "
             "stub rps | own p50 ms | own p99 ms | gw − stub p50 ms | router p50 ms | gateway cpu ms | stub cpu ms | "
             "load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        if name == "entropy_topk":
            continue
        for clients, g in r["clients"].items():
            s = r["stub"][clients]
            lines.append(f"| {name} | {clients} | {g['p50_ms']} | {g['p99_ms']} | {g['rps']} | {g['errors']} | "
                         f"{s['p50_ms']} | {s['p99_ms']} | {s['rps']} | {g.get('own_p50_ms')} | {g.get('own_p99_ms')} | "
                         f"{g['minus_stub_p50_ms']} | {g.get('router_p50_ms')} | {g.get('server_cpu_ms', '—')} | "
                         f"{s.get('server_cpu_ms', '—')} | {'→'.join(map(str, g['load_avg']))} |")
    extra = runs.get("entropy_topk")
    return "\n".join(lines) + "\n" + (entropy_markdown(extra) if extra else "")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        return serve(argv[1], int(argv[3]), argv[4:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategy", default="entropy",
                        help="a router that needs no checkpoint (embedding_* and prompt_length are fitted on made-up "
                             "labels; pik_probe and the method routers need a bundle)")
    parser.add_argument("--threshold", type=float, default=-math.inf,
                        help="-inf (default): nothing escalates, one stub call per request")
    parser.add_argument("--top-logprobs", default="strategy",
                        help='"strategy" (what the router reads), "full" (400) or a number asked of both models')
    parser.add_argument("--seconds", type=float, default=15.0, help="per cell")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 50])
    parser.add_argument("--label", default="run")
    parser.add_argument("--out", type=Path, default=OUT, help="writes OUT.json (merged) and OUT.md")
    if argv[:1] == ["entropy-error"]:
        args, name = parser.parse_args(argv[1:]), "entropy_topk"
        result = entropy_error([1, 5, 10, 20, 50, 100], [1.0, 0.8])
    else:
        args = parser.parse_args(argv)
        result = run(args.strategy, args.threshold, args.top_logprobs, args.seconds, args.clients)
        name = f"{args.label}:{args.strategy}:{args.top_logprobs}"
    path = args.out.with_suffix(".json")
    runs = json.loads(path.read_text()) if path.exists() else {}
    runs[name] = result
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(runs, indent=1, allow_nan=True) + "\n")
    args.out.with_suffix(".md").write_text(markdown(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
