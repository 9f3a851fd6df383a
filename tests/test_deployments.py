"""prefect.yaml: every deployment builds from its entrypoint, its parameters fit the flow, its schedule is right."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

ROOT = Path(__file__).resolve().parents[1]
SPEC = yaml.safe_load((ROOT / "prefect.yaml").read_text())
DEPLOYMENTS = {d["name"]: d for d in SPEC["deployments"]}


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_deployment_builds_from_its_entrypoint(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = DEPLOYMENTS[name]
    monkeypatch.chdir(ROOT)
    flow = load_flow_from_entrypoint(spec["entrypoint"])
    schedules = [{"cron": s["cron"], "timezone": s.get("timezone", "UTC")} for s in spec.get("schedules", [])]
    deployment = flow.to_deployment(name=name, parameters=spec.get("parameters", {}),
                                    cron=schedules[0]["cron"] if schedules else None,
                                    work_pool_name=spec["work_pool"]["name"], tags=spec.get("tags"))
    assert deployment.entrypoint and deployment.work_pool_name == "escalate-process"
    assert set(spec.get("parameters", {})) <= set(flow.parameters.properties)  # no parameter the flow lacks


def test_retrain_runs_nightly_and_promote_only_by_hand() -> None:
    from prefect.server.schemas.schedules import CronSchedule  # the server's own schedule logic

    nightly = DEPLOYMENTS["nightly"]
    assert nightly["entrypoint"] == "flows/retrain.py:retrain"
    assert nightly["parameters"]["skip_if_unchanged"] is True
    (schedule,) = nightly["schedules"]
    cron = CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
    start = datetime(2026, 1, 1, tzinfo=UTC)
    runs = asyncio.run(cron.get_dates(n=3, start=start))
    assert [(r.hour, r.minute) for r in runs] == [(2, 0)] * 3  # once a day, at 02:00 UTC
    assert [(b - a).days for a, b in zip(runs, runs[1:])] == [1, 1]
    assert "schedules" not in DEPLOYMENTS["by-hand"]
    assert DEPLOYMENTS["by-hand"]["entrypoint"] == "flows/promote.py:promote"
