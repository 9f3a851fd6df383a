"""The traffic log under load, stopped cleanly and killed: is every answered request logged exactly once?

    python bench/traffic_load.py --clients 50 --seconds 60     # writes bench/results/traffic_load.{md,json}

bench/gateway_overhead.py's stub model server and its real gateway process (a real Engine and Cascade over
the stub) run on 127.0.0.1, the gateway with its traffic log on (`traffic_dir`, a fresh temporary folder per
phase). N clients send completions for T seconds, each question tagged with a unique id, "(request t3x41)"
(letters between the digits, so the redaction of 7+ digit runs leaves it whole), and record which got a
200 and when. Then the gateway gets a signal while the clients are still sending:

- phase `sigterm`: a clean stop. uvicorn finishes the requests in flight, then the app's shutdown flushes
  the log. Every answered request must be in the log exactly once, and no other request.
- phase `sigkill`: no shutdown at all. Every row must be an answered request, none twice, every part file
  must read on its own, and each answered request missing from the log must have been answered at most
  one flush interval (+ `--margin`) before the kill: the writer thread flushes every `traffic_flush_s`.

A missing request's age is the kill time minus the time its client read the 200. The gateway enqueues the
row just before it sends the response, so that age slightly understates how long the row waited; its age
since the request was sent (`sent_age`) is an upper bound, reported beside it. Both processes are stopped
by PID at the end, whatever happened. The exit status is 0 when both phases pass.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is imported as a package from the root

from bench.gateway_overhead import KEY, QUESTIONS, pct, start
from bench.machine import cpu_model
from escalate.serving.traffic import SCHEMA, part_files, read_parts

OUT = Path("bench/results/traffic_load")
TAG = re.compile(r"\(request ([a-z]\d+x\d+)\)$")
PHASES = {"sigterm": (signal.SIGTERM, "t"), "sigkill": (signal.SIGKILL, "k")}  # the signal, the tags' letter


@dataclass
class Sent:
    """One request as its client saw it."""

    tag: str
    sent_at: float  # time.time()
    status: str = "in flight"  # "200", another status code, or the exception's name
    answered_at: float | None = None  # when the client read the 200
    wall_s: float | None = None


@dataclass
class Load:
    requests: list[Sent] = field(default_factory=list)
    signalled_at: float = math.nan
    load_s: float = math.nan
    load_avg: list[float] = field(default_factory=list)


def question(tag: str) -> str:
    return f"{QUESTIONS[sum(map(ord, tag)) % len(QUESTIONS)]} (request {tag})"


async def drive(url: str, pid: int, sig: signal.Signals, prefix: str, clients: int, seconds: float) -> Load:
    """`clients` loops post until the gateway gets `sig` after `seconds`; then no new request starts, and the ones in
    flight end as the gateway lets them (answered after a SIGTERM, cut after a SIGKILL)."""
    load, signalled = Load(load_avg=[round(os.getloadavg()[0], 2)]), asyncio.Event()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits, headers={"Authorization": f"Bearer {KEY}"}) as http:
        async def client(i: int) -> None:
            n = 0
            while not signalled.is_set():
                sent = Sent(f"{prefix}{i}x{n}", time.time())
                load.requests.append(sent)
                n += 1
                begun = time.perf_counter()
                try:
                    r = await http.post(f"{url}/v1/completions", json={"model": "escalate", "prompt": question(sent.tag)})
                except httpx.HTTPError as exc:
                    sent.status = type(exc).__name__
                    await asyncio.sleep(0.1)  # a gateway that died early: no busy loop of refused connections
                    continue
                sent.status = str(r.status_code)
                if r.status_code == 200:
                    sent.answered_at, sent.wall_s = time.time(), time.perf_counter() - begun

        async def stop() -> None:
            await asyncio.sleep(seconds)
            load.signalled_at = time.time()
            os.kill(pid, sig)
            signalled.set()

        begun = time.perf_counter()
        await asyncio.gather(stop(), *(client(i) for i in range(clients)))
        load.load_s = time.perf_counter() - begun
    load.load_avg.append(round(os.getloadavg()[0], 2))
    return load


def check(load: Load, tags: list[str], files_ok: bool, flush_s: float, margin_s: float, clean: bool) -> dict[str, Any]:
    """The verdict on one phase from what the clients saw and the tags the log holds (one per row)."""
    answered = {s.tag: s for s in load.requests if s.answered_at is not None}
    counts = Counter(tags)
    duplicates = sorted(t for t, c in counts.items() if c > 1)
    unanswered = sorted(t for t in counts if t not in answered)
    missing = [answered[t] for t in answered if t not in counts]
    ages = sorted(load.signalled_at - s.answered_at for s in missing)
    sent_ages = sorted(load.signalled_at - s.sent_at for s in missing)
    failures = []
    if duplicates:
        failures.append(f"{len(duplicates)} requests logged more than once (first: {duplicates[0]})")
    if unanswered:
        failures.append(f"{len(unanswered)} rows of requests that got no 200 (first: {unanswered[0]})")
    if not files_ok:
        failures.append("a part file did not read on its own")
    if clean and missing:
        failures.append(f"{len(missing)} answered requests missing from the log after a clean stop")
    late = [a for a in ages if a > flush_s + margin_s]
    if not clean and late:
        failures.append(f"{len(late)} answered requests missing from the log answered over {flush_s + margin_s:g} s "
                        f"before the kill (oldest {max(late):.3f} s)")
    walls = [s.wall_s for s in answered.values()]
    statuses = Counter(s.status for s in load.requests)
    return {"sent": len(load.requests), "answered": len(answered), "statuses": dict(statuses),
            "rows": len(tags), "duplicates": len(duplicates), "logged_unanswered": len(unanswered),
            "missing": len(missing), "missing_age_s": [round(a, 3) for a in ages],
            "missing_sent_age_s_max": round(max(sent_ages), 3) if sent_ages else None,
            "rps": round(len(answered) / load.load_s, 1) if load.load_s else math.nan,
            "p50_ms": pct(walls, 50), "p99_ms": pct(walls, 99), "load_s": round(load.load_s, 2),
            "load_avg": load.load_avg, "passed": not failures, "failures": failures}


def read_log(directory: Path) -> tuple[list[str], dict[str, Any]]:
    """The tags of the rows in the log (read as `harvest` reads it) and what the folder holds."""
    files = part_files(directory)
    unreadable: dict[Path, str] = {}
    for f in files:  # each file alone: one corrupt file must not hide behind the others
        try:
            pq.read_table(f, schema=SCHEMA)
        except Exception as exc:  # any failure to read is the finding
            unreadable[f] = f"{f.name}: {exc}"
    frame = read_parts([f for f in files if f not in unreadable])
    tags = [m.group(1) if (m := TAG.search(q)) else f"?{q[-40:]}" for q in frame["question"]]
    temps = [p.name for p in directory.rglob(".part-*.tmp")]
    last_row = frame["time"].max().timestamp() if len(frame) else math.nan
    return tags, {"part_files": len(files), "unreadable": list(unreadable.values()),
                  "temp_files_left": temps, "last_row_at": last_row}


def phase(name: str, stub_url: str, clients: int, seconds: float, flush_s: float, margin_s: float,
          strategy: str) -> dict[str, Any]:
    """One gateway with its own traffic folder, loaded, then signalled; the log read and judged."""
    with tempfile.TemporaryDirectory(prefix=f"traffic-{name}-") as tmp:
        spec = {"stub": stub_url, "strategy": strategy, "threshold": -math.inf, "top_logprobs": "strategy",
                "settings": {"traffic_dir": tmp, "traffic_flush_s": flush_s}}
        gateway, url = start("gateway", json.dumps(spec))
        try:
            load = asyncio.run(drive(url, gateway.pid, *PHASES[name], clients, seconds))
            exit_code = gateway.wait(120)
        finally:
            if gateway.poll() is None:
                gateway.kill()
                gateway.wait(10)
        tags, folder = read_log(Path(tmp))
    result = check(load, tags, not folder["unreadable"], flush_s, margin_s, clean=name == "sigterm")
    newest = folder.pop("last_row_at") - load.signalled_at
    return {**result, **folder, "gateway_pid": gateway.pid, "gateway_exit": exit_code,
            "newest_row_from_signal_s": round(newest, 3)}


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Traffic log under load: clean stop and SIGKILL", "",
             f"`{result['command']}` on {result['machine']} (2 cores shared with other work; load average "
             "= 1 min, before → after each phase). Stub model server + real gateway process with the traffic log "
             f"on (flush every {result['flush_s']:g} s); {result['clients']} clients for {result['seconds']:g} s per "
             "phase, then the signal while they still send. See the script's docstring for the checks. missing: answered "
             "requests not in the log, with the oldest one's age at the signal (since its client read the 200; in "
             "brackets since it was sent). A gateway exit of -15 is a clean stop: uvicorn re-raises SIGTERM after its "
             "graceful shutdown. A request the gateway had not begun to read at a SIGTERM ends in a connection error "
             "(uvicorn stops accepting and closes idle connections at once, then finishes the requests it holds): "
             "unanswered, so it must not be logged.", "",
             "| phase | sent | answered | rows logged | duplicates | rows not answered | missing | missing: max age "
             "s (since sent) | rps | p50 ms | p99 ms | part files | unreadable | temp files left | load avg | "
             "passed |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, p in result["phases"].items():
        age = f"{max(p['missing_age_s']):.3f} ({p['missing_sent_age_s_max']:.3f})" if p["missing"] else "—"
        lines.append(f"| {name} | {p['sent']} | {p['answered']} | {p['rows']} | {p['duplicates']} | "
                     f"{p['logged_unanswered']} | {p['missing']} | {age} | {p['rps']} | {p['p50_ms']} | {p['p99_ms']} | "
                     f"{p['part_files']} | {len(p['unreadable'])} | {len(p['temp_files_left'])} | "
                     f"{' → '.join(map(str, p['load_avg']))} | {'yes' if p['passed'] else 'NO'} |")
    lines.append("")
    for name, p in result["phases"].items():
        lines.append(f"- {name}: statuses {p['statuses']}; gateway exit {p['gateway_exit']}; newest logged row "
                     f"{p['newest_row_from_signal_s']:+.3f} s from the signal"
                     + (f"; missing ages (s): {p['missing_age_s']}" if p["missing"] and len(p["missing_age_s"]) <= 40
                        else "") + ("; failures: " + "; ".join(p["failures"]) if p["failures"] else ""))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0, help="of load per phase before the signal")
    parser.add_argument("--flush-s", type=float, default=1.0, help="the gateway's traffic_flush_s")
    parser.add_argument("--margin", type=float, default=0.5,
                        help="seconds allowed past one flush interval (the write itself, a busy machine)")
    parser.add_argument("--strategy", default="entropy")
    parser.add_argument("--phases", nargs="+", choices=list(PHASES), default=list(PHASES))
    parser.add_argument("--out", type=Path, default=OUT, help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.seconds <= 0 or args.flush_s <= 0 or args.margin < 0:
        parser.error("--clients >= 1, --seconds > 0, --flush-s > 0 and --margin >= 0 are required")
    stub, stub_url = start("stub")
    try:
        phases = {name: phase(name, stub_url, args.clients, args.seconds, args.flush_s, args.margin, args.strategy)
                  for name in args.phases}
    finally:
        stub.terminate()
        try:
            stub.wait(10)
        except subprocess.TimeoutExpired:
            stub.kill()
    result = {"command": "python bench/traffic_load.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": cpu_model(), "clients": args.clients, "seconds": args.seconds, "flush_s": args.flush_s,
              "margin_s": args.margin, "stub_pid": stub.pid, "phases": phases}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0 if all(p["passed"] for p in phases.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
