"""The traffic log: one record per answered request, written off the request path, opt-out, redaction,
flush interval, crash safety and retention; the drift gauges beside it."""

from __future__ import annotations

import math
import re
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from escalate.serving.drift import MIN_LIVE, REFERENCE, WINDOW, LiveDrift, psi
from escalate.serving.engine import Answer
from escalate.serving.gateway import escalate_object
from escalate.serving.traffic import (
    NO_LOG_HEADER,
    SCHEMA,
    NullTrafficLog,
    TrafficLog,
    open_traffic_log,
    part_files,
    read_parts,
    redact,
)
from tests.test_gateway import AUTH, QUESTION, StandInEngine, chat, client, result, served


def logged(tmp_path: Path, **settings: Any) -> TestClient:
    return client(StandInEngine(lambda q: served({**result("llm"), "question": q})), traffic_dir=str(tmp_path),
                  **settings)


def wait_for_rows(directory: Path, n: int, timeout_s: float = 5.0) -> pd.DataFrame:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = read_parts(part_files(directory))
        if len(rows) >= n:
            return rows
        time.sleep(0.02)
    raise AssertionError(f"{n} rows not written within {timeout_s} s: {len(rows)}")


def exchange(question: str = QUESTION) -> dict[str, Any]:
    """TrafficLog.log's arguments for one answered question, as the gateway passes them."""
    row = {**result("llm"), "question": question}
    return {"question": question, "result": row,
            "meta": escalate_object(Answer(row, None, "v1-llm"), StandInEngine().deployment, 0.002)}


def test_every_answered_request_is_one_record_with_its_route_cost_and_latency(tmp_path: Path) -> None:
    with logged(tmp_path) as c:
        assert chat(c).status_code == 200
        r = c.post("/v1/completions", json={"model": "escalate-cascade", "prompt": "What is 2 + 2?"}, headers=AUTH)
        assert r.status_code == 200
        assert chat(c, messages=[]).status_code == 422  # not answered: not logged
    rows = read_parts(part_files(tmp_path))  # closing the app flushed the rest
    assert list(rows.columns) == SCHEMA.names and len(rows) == 2
    first = rows.iloc[0]
    assert (first.question, first.model, first.escalated, first.strategy) == (QUESTION, "llm", True, "entropy")
    assert (first.deployment_model, first.deployment_version, first.alias) == ("escalate-cascade", "1", "champion")
    assert first.score == pytest.approx(-0.141) and first.threshold == pytest.approx(0.5)  # the raw score, not P(right)
    assert first.answer == "6" and first.parsed_answer == "6" and pd.isna(first.fallback) and first.served_by == "v1-llm"
    assert (first.slm_prompt_tokens, first.slm_output_tokens, first.llm_prompt_tokens) == (30, 3, 30)
    assert first.cost == pytest.approx(21.5) and first.cost_llm == pytest.approx(20.0)
    assert first.latency_llm_s == pytest.approx(0.05) and first.latency_gateway_s > 0
    assert rows.iloc[1].question == "What is 2 + 2?"
    assert (tmp_path / f"date={first.time.date().isoformat()}").is_dir()


def test_a_request_can_opt_out_and_logging_off_is_a_null_log(tmp_path: Path) -> None:
    with logged(tmp_path) as c:
        r = c.post("/v1/chat/completions", headers={**AUTH, NO_LOG_HEADER: "1"},
                   json={"model": "escalate-cascade", "messages": [{"role": "user", "content": "secret"}]})
        assert r.status_code == 200
        assert chat(c).status_code == 200
    assert read_parts(part_files(tmp_path)).question.tolist() == [QUESTION]
    off = client(StandInEngine())
    assert isinstance(off.app.state.gateway.traffic, NullTrafficLog)
    assert isinstance(open_traffic_log(None), NullTrafficLog)


@pytest.mark.parametrize(("question", "redacted"), [
    ("Mail bob.smith+x@example.co.uk the total of 3 and 4", "Mail [email] the total of 3 and 4"),
    ("My card 4111 1111 1111 1111 and phone 555-123-4567 cost 12 each", "My card [number] and phone [number] cost 12 each"),
    ("Tom has 1234567 apples", "Tom has [number] apples"),
    ("Tom has 123456 apples and gives 3 - 2 away", "Tom has 123456 apples and gives 3 - 2 away"),
])
def test_default_redaction_masks_emails_and_long_digit_runs(question: str, redacted: str) -> None:
    assert redact(question) == redacted


def test_redaction_runs_before_anything_is_written(tmp_path: Path) -> None:
    with logged(tmp_path, traffic_redact=lambda q: q.replace("Eva", "<name>")) as c:
        assert chat(c).status_code == 200
    [question] = read_parts(part_files(tmp_path)).question
    assert question.startswith("<name> has 7 cups") and "Eva" not in question
    with logged(tmp_path / "default") as c:
        chat(c, messages=[{"role": "user", "content": "I am eva@example.com: what is 2 + 2?"}])
    [question] = read_parts(part_files(tmp_path / "default")).question
    assert question == "I am [email]: what is 2 + 2?"


def test_a_flush_happens_within_the_interval_while_serving(tmp_path: Path) -> None:
    with logged(tmp_path, traffic_flush_s=0.2) as c:
        start = time.monotonic()
        assert chat(c).status_code == 200
        wait_for_rows(tmp_path, 1, timeout_s=1.5)  # still serving: the writer thread wrote it
        assert time.monotonic() - start < 1.5


def test_a_writer_killed_between_flushes_leaves_readable_files(tmp_path: Path) -> None:
    traffic = TrafficLog(tmp_path, flush_s=0.05)
    traffic.log(**exchange())
    wait_for_rows(tmp_path, 1)
    traffic.flush = lambda: 0  # the process dies: no further flush, not even the last one
    traffic.log(**exchange("lost with the process"))
    traffic.close()
    [folder] = list(tmp_path.iterdir())
    (folder / ".part-9-1-1.parquet.tmp").write_bytes(b"PAR1 half a file")  # a write cut short by SIGKILL
    files = part_files(tmp_path)
    assert all(pq.read_table(f).num_rows for f in files)  # every listed file is whole
    assert read_parts(files).question.tolist() == [QUESTION]


def test_the_writer_deletes_partitions_past_retention(tmp_path: Path) -> None:
    today = date.today()
    old, kept = today - timedelta(days=8), today - timedelta(days=2)
    for day in (old, kept):
        (tmp_path / f"date={day.isoformat()}").mkdir(parents=True)
    (tmp_path / "date=not-a-day").mkdir()  # not ours: left alone
    traffic = TrafficLog(tmp_path, flush_s=0.05, retention_days=7)
    deadline = time.monotonic() + 5
    while (tmp_path / f"date={old.isoformat()}").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    traffic.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"date={kept.isoformat()}", "date=not-a-day"])


def test_nan_score_and_infinite_threshold_are_logged_as_null(tmp_path: Path) -> None:
    row = {**result("llm"), "confidence": math.nan, "score": math.nan, "threshold": math.inf}
    with client(StandInEngine(lambda q: served(row, "slm_unscored")), traffic_dir=str(tmp_path)) as c:
        assert chat(c).status_code == 200
    [record] = read_parts(part_files(tmp_path)).to_dict("records")
    assert pd.isna(record["score"]) and pd.isna(record["threshold"]) and record["fallback"] == "slm_unscored"


def test_psi_is_near_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(0)
    reference = rng.beta(5, 2, 5000)
    assert psi(reference, rng.beta(5, 2, 2000)) < 0.02
    assert psi(reference, rng.beta(2, 5, 2000)) > 1.0
    assert psi(np.full(100, 0.5), np.full(100, 0.5)) == pytest.approx(0.0)  # ties: bins collapse, no error


def test_drift_gauges_on_metrics() -> None:
    scores = iter(np.r_[np.full(REFERENCE, 0.9), np.full(MIN_LIVE, 0.1)])

    def answer(q: str) -> Answer:
        score = next(scores)
        return served({**result("llm" if score < 0.5 else "slm"), "score": score})  # drift watches the raw score

    def gauges() -> dict[str, float]:
        families = text_string_to_metric_families(c.get("/metrics").text)
        return {s.name: s.value for f in families for s in f.samples}

    c = client(StandInEngine(answer))
    assert math.isnan(gauges()["escalate_live_escalation_rate"]) and math.isnan(gauges()["escalate_score_psi"])
    for _ in range(REFERENCE + MIN_LIVE):
        assert chat(c).status_code == 200
    assert gauges()["escalate_live_escalation_rate"] == pytest.approx(MIN_LIVE / WINDOW)  # the last 1000: 100 escalated
    assert gauges()["escalate_score_psi"] > 1.0  # all scores moved from 0.9 to 0.1


def test_drift_reference_restarts_with_a_new_deployment_and_skips_fallback_scores() -> None:
    drift = LiveDrift(window=200, reference_size=20)
    for _ in range(20):
        drift.observe(0.9, False, ("entropy", 0.5))
    for _ in range(MIN_LIVE):
        drift.observe(0.1, True, ("entropy", 0.5))
    assert drift.score_psi() > 1.0 and drift.escalation_rate() == pytest.approx(MIN_LIVE / (20 + MIN_LIVE))
    for _ in range(20 + MIN_LIVE):
        drift.observe(0.1, True, ("p_true", 0.3))  # another deployment: its own reference
        drift.observe(0.0, True, ("llm_only", math.inf), router_scored=False)  # SLM down: no router score
    assert drift.score_psi() == pytest.approx(0.0)


def test_alert_rules_watch_gauges_the_gateway_exports() -> None:
    rules = yaml.safe_load((Path(__file__).resolve().parents[1] / "infra/prometheus/alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    exported = {f.name for f in text_string_to_metric_families(client(StandInEngine()).get("/metrics").text)}
    watched = {name for expr in exprs for name in re.findall(r"escalate_\w+", expr)}
    assert watched == {"escalate_score_psi", "escalate_live_escalation_rate", "escalate_shadow_accept_accuracy_high",
                       "escalate_calib_accept_accuracy", "escalate_calib_escalation_rate"} and watched <= exported
