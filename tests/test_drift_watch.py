"""Drift watch: the drift decision (each limit crossed and not; unmeasured gauges never trigger), the
/metrics page read over real HTTP, and (slow) the flow's event running the retrain deployment through
prefect.yaml's trigger on a Prefect test server, the retrain run recording the reason."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from escalate.drift_watch import (
    CALIB_ACCEPT,
    CALIB_RATE,
    DRIFT,
    DRIFT_EVENT,
    GAUGES,
    LIVE_RATE,
    NO_DRIFT,
    NO_VERDICT,
    PSI,
    SHADOW_HIGH,
    SHADOW_LABELS,
    DriftLimits,
    drift_event,
    figures,
    judge,
    parse_gauges,
)
from escalate.serving.drift import MIN_LIVE, REFERENCE
from escalate.serving.vllm_server import free_port
from tasks.drift_watch import read_metrics
from tests.test_gateway import StandInEngine, chat, client, result, served

ROOT = Path(__file__).resolve().parents[1]
STEADY = {PSI: 0.05, SHADOW_HIGH: 0.97, SHADOW_LABELS: 400, CALIB_ACCEPT: 0.93, LIVE_RATE: 0.33, CALIB_RATE: 0.31}


def page(gauges: dict[str, float]) -> str:
    """A Prometheus text page as prometheus_client writes it (the gateway's own writer)."""
    registry = CollectorRegistry()
    for name, value in gauges.items():
        Gauge(name, name, registry=registry).set(value)
    return generate_latest(registry).decode()


@contextmanager
def metrics_server(body: list[str], status: int = 200) -> Iterator[str]:
    """A loopback HTTP server answering GET /metrics with body[0] (a list, so a test can change the page)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = body[0].encode() if self.path == "/metrics" else b"not found"
            self.send_response(status if self.path == "/metrics" else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/metrics"
    finally:
        server.shutdown()
        server.server_close()


def test_steady_gauges_are_no_drift_and_say_each_figure_with_its_limit() -> None:
    verdict = judge(parse_gauges(page(STEADY)))
    assert verdict.status == NO_DRIFT and not verdict.drifted
    assert [c.crossed for c in verdict.checks] == [False, False, False]
    assert verdict.reason == ("no-drift: score PSI 0.050 <= limit 0.25; shadow accept-accuracy 95% upper bound 0.970 "
                              "over 400 labels >= limit 0.930 (calib's 0.930 less margin 0); escalation rate 0.330 "
                              "vs calib's 0.310: |difference| 0.020 <= limit 0.15")
    assert "\n" not in verdict.reason


@pytest.mark.parametrize(("moved", "check", "named"), [
    ({PSI: 0.31}, "score_psi", "score PSI 0.310 > limit 0.25"),
    ({SHADOW_HIGH: 0.9}, "accept_accuracy", "upper bound 0.900 over 400 labels < limit 0.930"),
    ({LIVE_RATE: 0.52}, "escalation_rate", "escalation rate 0.520 vs calib's 0.310: |difference| 0.210 > limit 0.15"),
    ({LIVE_RATE: 0.10}, "escalation_rate", "|difference| 0.210 > limit 0.15"),  # too few escalate: drift too
])
def test_each_limit_crossed_is_drift_and_the_reason_names_only_it(moved: dict, check: str, named: str) -> None:
    verdict = judge({**STEADY, **moved})
    assert verdict.status == DRIFT and verdict.drifted
    assert [c.name for c in verdict.checks if c.crossed] == [check]
    assert verdict.reason.startswith("drift: ") and named in verdict.reason and verdict.reason.count(";") == 0


def test_limits_are_settings() -> None:
    drifted = {**STEADY, PSI: 0.2, SHADOW_HIGH: 0.92, LIVE_RATE: 0.49}
    assert judge(drifted).status == DRIFT  # the shadow bound and the rate cross the defaults
    assert judge(drifted, DriftLimits(psi=0.1)).reason.count(";") == 2  # all three crossed
    loose = DriftLimits(psi=0.3, accept_accuracy_margin=0.02, escalation_rate_delta=0.2)
    assert judge(drifted, loose).status == NO_DRIFT
    assert "limit 0.910 (calib's 0.930 less margin 0.02)" in judge(drifted, loose).reason


@pytest.mark.parametrize("missing", [PSI, SHADOW_HIGH, CALIB_ACCEPT, LIVE_RATE, CALIB_RATE])
def test_a_missing_or_nan_gauge_gives_its_limit_no_verdict_never_a_trigger(missing: str) -> None:
    crossing = {PSI: 9.0, SHADOW_HIGH: 0.1, LIVE_RATE: 0.99}  # every figure far over its limit
    for gauges in ({k: v for k, v in {**STEADY, **crossing}.items() if k != missing},
                   {**STEADY, **crossing, missing: math.nan}):
        verdict = judge(gauges)
        unmeasured = [c for c in verdict.checks if c.crossed is None]
        assert len(unmeasured) == 1 and missing in unmeasured[0].detail and "not measured" in unmeasured[0].detail
        assert verdict.status == DRIFT  # the other two, measured, still count
    nothing = judge({k: math.nan for k in GAUGES})
    assert nothing.status == NO_VERDICT and not nothing.drifted
    assert judge({}).status == NO_VERDICT and judge({}).reason.count("not measured") == 3


def test_a_fresh_gateway_exports_every_gauge_the_watch_reads_and_is_no_verdict() -> None:
    text = client(StandInEngine()).get("/metrics").text
    gauges = parse_gauges(text, "the gateway")
    assert set(GAUGES) <= set(gauges)  # the names the watch reads are the names the gateway writes
    assert judge(gauges).status == NO_VERDICT and figures(gauges) == {SHADOW_LABELS: 0.0}


def test_figures_keep_only_measured_drift_gauges() -> None:
    assert figures({**STEADY, PSI: math.nan, "escalate_requests_total": 3.0}) == {
        k: v for k, v in STEADY.items() if k != PSI}


@pytest.mark.parametrize(("limits", "named"), [
    (dict(psi=0), "psi_limit"), (dict(psi=math.nan), "psi_limit"), (dict(accept_accuracy_margin=-0.1), "margin"),
    (dict(escalation_rate_delta=0), "escalation_rate_delta"), (dict(escalation_rate_delta=1.5), "escalation_rate_delta"),
])
def test_bad_limits_are_refused_naming_the_setting(limits: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        DriftLimits(**limits)


def test_a_page_that_is_not_prometheus_text_names_the_setting() -> None:
    with pytest.raises(ValueError, match=r"http://x/metrics is not a Prometheus text page .*metrics_url"):
        parse_gauges("<html>\n<body>gateway</body> oops\n", "http://x/metrics")


def test_read_metrics_over_real_http_and_a_clear_error_when_the_gateway_is_not_there() -> None:
    body = [page(STEADY)]
    with metrics_server(body) as url:
        assert judge(parse_gauges(read_metrics.fn(url, 5.0), url)).status == NO_DRIFT
        body[0] = page({**STEADY, PSI: 0.4})
        assert judge(parse_gauges(read_metrics.fn(url, 5.0), url)).status == DRIFT
        with pytest.raises(RuntimeError, match=r"/nope answered HTTP 404; set metrics_url"):
            read_metrics.fn(url.replace("/metrics", "/nope"), 5.0)
    with pytest.raises(RuntimeError, match=rf"cannot read {url} .*is the gateway up\? set metrics_url"):
        read_metrics.fn(url, 1.0)  # the server is gone


def test_prefect_yaml_trigger_parses_into_prefects_model_and_covers_the_emitted_event() -> None:
    from prefect.events import DeploymentEventTrigger  # Prefect's own schemas: the CLI's and the server's
    from prefect.events.schemas.deployment_triggers import DeploymentTriggerTypes
    from prefect.server.events.schemas.automations import EventTrigger
    from prefect.server.events.schemas.events import ReceivedEvent
    from pydantic import TypeAdapter

    spec = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    nightly, watch = spec["nightly"], spec["every-15-minutes"]
    assert nightly["entrypoint"] == "flows/retrain.py:retrain" and nightly["parameters"]["reason"] == "scheduled"
    (trigger,) = [TypeAdapter(DeploymentTriggerTypes).validate_python(t) for t in nightly["triggers"]]
    assert isinstance(trigger, DeploymentEventTrigger) and trigger.enabled
    assert trigger.expect == {DRIFT_EVENT} and trigger.parameters == {"reason": "{{ event.payload.reason }}"}
    trigger.set_deployment_id(uuid4())
    served = EventTrigger.model_validate(trigger.as_automation().trigger.model_dump(mode="json"))  # as the server holds it

    def event(profile: str, **changes: str) -> ReceivedEvent:
        gauges = {**STEADY, PSI: 0.4}
        emitted = drift_event(judge(gauges), profile, "http://127.0.0.1:8000/metrics", gauges)  # what the flow emits
        return ReceivedEvent(**{**emitted, **changes}, occurred=datetime.now(UTC), id=uuid4())

    profile = watch["parameters"]["profile"]
    assert served.covers(event(profile)) and event(profile).payload["reason"].startswith("drift: score PSI 0.400")
    assert not served.covers(event("smoke"))  # another profile's drift does not retrain tiny
    assert not served.covers(event(profile, event="escalate.drift.cleared"))
    assert watch["entrypoint"] == "flows/drift_watch.py:drift_watch" and watch["schedules"][0]["cron"] == "*/15 * * * *"


def test_the_alert_rules_fire_where_the_drift_watch_retrains() -> None:
    rules = yaml.safe_load((ROOT / "infra/prometheus/alerts.yml").read_text())
    exprs = {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}
    limits = DriftLimits()
    assert exprs["EscalateScoreDrift"] == f"{PSI} > {limits.psi}"
    assert exprs["EscalateShadowAccuracyBelowCalib"] == f"{SHADOW_HIGH} < {CALIB_ACCEPT}"
    assert exprs["EscalateEscalationRateOffCalib"] == f"abs({LIVE_RATE} - {CALIB_RATE}) > {limits.escalation_rate_delta}"


def test_the_flow_has_a_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    from flows.drift_watch import main  # Prefect: imported by the tests that run the flow

    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and "--escalation-rate-delta" in capsys.readouterr().out


@contextmanager
def gateway_on_loopback(app: Any) -> Iterator[str]:
    """The gateway app served by uvicorn on a loopback port (where /metrics answers without a key)."""
    import uvicorn  # the gateway's own server, as `escalate serve` runs it

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), lifespan="off", log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}/metrics"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.mark.slow
def test_drift_injected_into_traffic_runs_the_retrain_deployment_with_its_reason(
    prefect_harness: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.events.schemas.deployment_triggers import DeploymentTriggerTypes
    from prefect.flows import load_flow_from_entrypoint
    from pydantic import TypeAdapter

    from flows.drift_watch import drift_watch  # Prefect: imported by the tests that run the flow

    nightly = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}["nightly"]
    monkeypatch.chdir(ROOT)
    triggers = [TypeAdapter(DeploymentTriggerTypes).validate_python(t) for t in nightly["triggers"]]
    deployment = load_flow_from_entrypoint(nightly["entrypoint"]).to_deployment(
        name=nightly["name"], parameters=nightly["parameters"], triggers=triggers)
    deployment_id = deployment.apply()  # creates the trigger's automation, as `prefect deploy` does

    def triggered_runs() -> list:
        with get_client(sync_client=True) as api:
            return api.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))

    scores = [0.9] * (REFERENCE + MIN_LIVE) + [0.1] * 2 * MIN_LIVE  # then the traffic shifts: low scores escalate
    c = client(StandInEngine(lambda q: served({**result("llm" if scores[0] < 0.5 else "slm"), "score": scores.pop(0)})))
    c.app.state.gateway.metrics.set_calib({"accept_accuracy": 0.93, "escalation_rate": 0.0})  # what calib said

    def watch() -> dict:
        return drift_watch(metrics_url=url, profile="tiny", root=str(ROOT))

    with gateway_on_loopback(c.app) as url:
        fresh = watch()
        assert fresh["status"] == NO_VERDICT and fresh["event_id"] is None  # nothing measured yet
        for _ in range(REFERENCE + MIN_LIVE):
            assert chat(c).status_code == 200
        steady = watch()
        assert steady["status"] == NO_DRIFT and steady["event_id"] is None
        while scores:
            assert chat(c).status_code == 200
        drifted = watch()
    assert drifted["status"] == DRIFT and drifted["event_id"]
    assert drifted["reason"].startswith("drift: score PSI ")
    assert drifted["reason"].endswith("; escalation rate 0.200 vs calib's 0.000: |difference| 0.200 > limit 0.15")
    deadline = time.monotonic() + 120
    while not (runs := triggered_runs()) and time.monotonic() < deadline:
        time.sleep(1)
    (run,) = runs  # one run: the fresh and steady gateway emitted nothing
    assert run.parameters["reason"] == drifted["reason"]
    assert run.parameters["profile"] == "tiny" and run.parameters["skip_if_unchanged"] is True


@pytest.mark.slow
def test_retrain_records_why_it_ran(prefect_harness: None, mlflow_uri: str, tmp_path: Path) -> None:
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from flows.retrain import RETRAIN_REASON, retrain
    from tests.conftest import make_project

    with pytest.raises(ValueError, match="reason must say why"):
        retrain(profile="smoke", root=str(tmp_path), tracking_uri=mlflow_uri, reason=" ")
    project = make_project(tmp_path)  # data the questions stage refuses: the run starts, tags, and stops there
    pd.DataFrame({"q": ["What is 1+1?", ""], "a": ["2", "6"]}).to_csv(project / "bad.csv", index=False)
    profile = yaml.safe_load((project / "configs/smoke.yaml").read_text())
    profile["data"] = {"adapter": "table", "path": "bad.csv", "task": "arith", "columns": {"question": "q", "answer": "a"}}
    (project / "configs/smoke.yaml").write_text(yaml.safe_dump(profile))
    reason = "drift: score PSI 0.410 > limit 0.25"
    with pytest.raises(Exception, match="questions@smoke failed"):
        retrain(profile="smoke", root=str(project), tracking_uri=mlflow_uri, reason=reason)
    client = MlflowClient(tracking_uri=mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("escalate").experiment_id],
                              filter_string="attributes.run_name = 'retrain-smoke'", order_by=["attributes.start_time DESC"])
    assert runs[0].data.tags[RETRAIN_REASON] == reason
