"""The traffic log: every answered exchange, appended to day-partitioned Parquet for `harvest` to read.

    serving/traffic/date=2026-05-01/part-1777593600123456789-4242-0.parquet

The request path only enqueues a dict (`TrafficLog.log`); a writer thread flattens, redacts and
writes. Each flush (every `flush_s`, 1 s by default) writes its rows as a new small part file:
first under a hidden temporary name, then renamed, so a reader (or `harvest`) never sees half a
file and a killed gateway loses at most the rows of the last interval. The writer also deletes
partitions older than the retention period. A request with `x-escalate-no-log: 1` is not logged;
with logging off the gateway holds a `NullTrafficLog`. A kept answer drawn for a shadow label
(escalate.serving.shadow) is enqueued by the shadow worker once its label is back, with its `shadow_*` columns.

Redaction runs in the writer, before anything reaches disk: by default it masks e-mail addresses
and runs of 7 or more digits (phone, card and account numbers; optional single spaces or dashes
between digits) in the question. Answers are kept as they are: the LLM's answer is harvest's label.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger("escalate.traffic")

TRAFFIC_DIR = "traffic"  # under serving/: where `escalate serve` logs and `harvest` reads by default
NO_LOG_HEADER = "x-escalate-no-log"
PARTITION = "date="
PART_GLOB = "part-*.parquet"
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
DIGIT_RUN = re.compile(r"\d(?:[ -]?\d){6,}")
MASK_EMAIL, MASK_DIGITS = "[email]", "[number]"
# A full queue drops rows (and counts them) rather than slowing requests: the log is not worth latency.
MAX_QUEUED = 100_000

SCHEMA = pa.schema([
    ("time", pa.timestamp("us", tz="UTC")), ("deployment_model", pa.string()), ("deployment_version", pa.string()),
    ("alias", pa.string()), ("strategy", pa.string()), ("score", pa.float64()), ("threshold", pa.float64()),
    ("model", pa.string()), ("served_by", pa.string()), ("escalated", pa.bool_()), ("fallback", pa.string()),
    ("question", pa.string()), ("answer", pa.string()), ("parsed_answer", pa.string()),
    ("slm_prompt_tokens", pa.int64()), ("slm_output_tokens", pa.int64()), ("llm_prompt_tokens", pa.int64()),
    ("llm_output_tokens", pa.int64()), ("cost_slm", pa.float64()), ("cost_router", pa.float64()),
    ("cost_llm", pa.float64()), ("cost", pa.float64()), ("latency_slm_s", pa.float64()),
    ("latency_router_s", pa.float64()), ("latency_llm_s", pa.float64()), ("latency_gateway_s", pa.float64()),
    # Shadow label (escalate.serving.shadow), null unless this kept answer was shadowed: agreed, disagreed or
    # failed; the LLM's answer and its parsed form (harvest's label); whether it agreed with the SLM's.
    ("shadow", pa.string()), ("shadow_answer", pa.string()), ("shadow_parsed_answer", pa.string()),
    ("shadow_agrees", pa.bool_()), ("latency_shadow_s", pa.float64()),
])


def redact(question: str) -> str:
    """Mask e-mail addresses and long digit runs: the default redaction hook."""
    return DIGIT_RUN.sub(MASK_DIGITS, EMAIL.sub(MASK_EMAIL, question))


def row(entry: Mapping[str, Any], redactor: Callable[[str], str]) -> dict[str, Any]:
    """One flat traffic record from what the request enqueued: its time, question and `escalate` object,
    and the result's answer fields (the answer is the LLM's where `model` is "llm"); a shadowed request's
    meta also holds its `shadow` label."""
    meta, result = entry["meta"], entry["result"]
    deployment, tokens, cost, latency = meta["deployment"], meta["tokens"], meta["cost"], meta["latency_s"]
    shadow = meta.get("shadow") or {}
    return {
        "time": datetime.fromtimestamp(entry["time"], UTC), "deployment_model": deployment["model"],
        "deployment_version": str(deployment["version"]), "alias": deployment["alias"],
        "strategy": meta["strategy"], "score": meta["score"], "threshold": meta["threshold"],
        "model": meta["model"], "served_by": meta["served_by"], "escalated": bool(meta["escalated"]),
        "fallback": meta["fallback"], "question": redactor(entry["question"]), "answer": result["answer"],
        "parsed_answer": None if result["parsed_answer"] is None else str(result["parsed_answer"]),
        **{f"{r}_{k}_tokens": int(tokens[r][k]) for r in ("slm", "llm") for k in ("prompt", "output")},
        **{f"cost_{k}": float(cost[k]) for k in ("slm", "router", "llm")}, "cost": float(cost["total"]),
        **{f"latency_{k}_s": float(latency[k]) for k in ("slm", "router", "llm", "gateway")},
        "shadow": shadow.get("status"), "shadow_answer": shadow.get("answer"),
        "shadow_parsed_answer": shadow.get("parsed_answer"), "shadow_agrees": shadow.get("agrees"),
        "latency_shadow_s": shadow.get("latency_s"),
    }


def partitions(directory: Path) -> list[Path]:
    """The day partitions under a traffic directory, oldest first."""
    return sorted(p for p in directory.glob(f"{PARTITION}*") if p.is_dir())


def partition_day(path: Path) -> date:
    return date.fromisoformat(path.name.removeprefix(PARTITION))


def part_files(directory: Path | str) -> list[Path]:
    """Every finished part file, oldest partition first (a temporary file, hidden, is never listed)."""
    return [f for p in partitions(Path(directory)) for f in sorted(p.glob(PART_GLOB))]


def read_parts(files: list[Path]) -> pd.DataFrame:
    """The rows of some part files, in SCHEMA's columns (an empty frame for none)."""
    tables = [pq.read_table(f, schema=SCHEMA) for f in files]
    return pa.concat_tables(tables).to_pandas() if tables else SCHEMA.empty_table().to_pandas()


class TrafficLog:
    """Appends answered exchanges to `directory` from a writer thread; `close` flushes what is queued."""

    def __init__(self, directory: Path | str, flush_s: float = 1.0, retention_days: int = 30,
                 redactor: Callable[[str], str] = redact) -> None:
        self.directory = Path(directory)
        self.flush_s, self.retention_days, self.redactor = flush_s, retention_days, redactor
        self.dropped = 0
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(MAX_QUEUED)
        self._stop = threading.Event()
        self._seq = 0
        self._thread = threading.Thread(target=self._run, name="traffic-log", daemon=True)
        self._thread.start()

    def log(self, question: str, result: dict[str, Any], meta: dict[str, Any],
            headers: Mapping[str, str] | None = None, at: float | None = None) -> None:
        """Enqueue one answered exchange, unless the request opted out; never blocks the request. `at`:
        when it was answered (time.time()), for a row logged later (a shadowed one); default now."""
        if headers is not None and headers.get(NO_LOG_HEADER) == "1":
            return
        try:
            self._queue.put_nowait({"time": time.time() if at is None else at, "question": question, "result": result,
                                    "meta": meta})
        except queue.Full:
            self.dropped += 1

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the writer after a last flush."""
        self._stop.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        last_retention = -float("inf")
        while not self._stop.is_set():
            self._stop.wait(self.flush_s)
            self.flush()
            if time.monotonic() - last_retention > 3600:  # partitions are days: hourly is often enough
                self.apply_retention()
                last_retention = time.monotonic()
        self.flush()  # what was enqueued while the last flush wrote: close() may come mid-flush

    def flush(self) -> int:
        """Write what is queued, one part file per day it spans; returns how many rows were written."""
        entries = []
        while True:
            try:
                entries.append(self._queue.get_nowait())
            except queue.Empty:
                break
        rows: dict[str, list[dict[str, Any]]] = {}
        for entry in entries:
            try:
                record = row(entry, self.redactor)
            except Exception:  # one bad record (or a failing redactor) must not stop the log
                log.exception("traffic log: record skipped")
                continue
            rows.setdefault(record["time"].date().isoformat(), []).append(record)
        for day, records in rows.items():
            try:
                self._write(day, records)
            except OSError:
                log.exception("traffic log: %d rows of %s lost", len(records), day)
        return sum(len(r) for r in rows.values())

    def _write(self, day: str, records: list[dict[str, Any]]) -> None:
        folder = self.directory / f"{PARTITION}{day}"
        folder.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        name = f"part-{time.time_ns()}-{os.getpid()}-{self._seq}.parquet"
        tmp = folder / f".{name}.tmp"
        pq.write_table(pa.Table.from_pylist(records, schema=SCHEMA), tmp)
        os.replace(tmp, folder / name)

    def apply_retention(self, today: date | None = None) -> list[Path]:
        """Delete partitions older than retention_days; returns them."""
        cutoff = (today or datetime.now(UTC).date()) - timedelta(days=self.retention_days)
        old = [p for p in partitions(self.directory) if _day_or_none(p) is not None and _day_or_none(p) < cutoff]
        for path in old:
            shutil.rmtree(path, ignore_errors=True)
        return old


class NullTrafficLog:
    """Logging off: the same surface, doing nothing."""

    dropped = 0

    def log(self, question: str, result: dict[str, Any], meta: dict[str, Any],
            headers: Mapping[str, str] | None = None, at: float | None = None) -> None:
        """Nothing is recorded."""

    def close(self, timeout_s: float = 10.0) -> None:
        """Nothing to flush."""


def open_traffic_log(directory: Path | str | None, flush_s: float = 1.0, retention_days: int = 30,
                     redactor: Callable[[str], str] = redact) -> TrafficLog | NullTrafficLog:
    """The traffic log the settings ask for: a TrafficLog under `directory`, or a NullTrafficLog for None."""
    if directory is None:
        return NullTrafficLog()
    return TrafficLog(directory, flush_s, retention_days, redactor)


def _day_or_none(path: Path) -> date | None:
    try:
        return partition_day(path)
    except ValueError:  # not ours: leave it alone
        return None
