"""Drift-watch tasks: read the gateway's /metrics page; emit the drift event the retrain trigger expects.

Reading is retried (a gateway restarting answers again in seconds); emitting is not (Prefect's events
client buffers and resends on its own).
"""

from __future__ import annotations

import httpx
from prefect import get_run_logger, task
from prefect.events import emit_event

from escalate.drift_watch import DRIFT_EVENT, DriftVerdict, drift_event


@task(name="read-metrics", retries=2, retry_delay_seconds=10)
def read_metrics(url: str, timeout_s: float) -> str:
    """The gateway's /metrics page (Prometheus text)."""
    try:
        response = httpx.get(url, timeout=timeout_s)
    except httpx.HTTPError as e:
        raise RuntimeError(f"cannot read {url} ({e}); is the gateway up? set metrics_url to its /metrics") from e
    if response.status_code != 200:
        raise RuntimeError(f"{url} answered HTTP {response.status_code}; set metrics_url to the gateway's /metrics")
    return response.text


@task(name="emit-drift")
def emit_drift(verdict: DriftVerdict, profile: str, metrics_url: str, gauges: dict[str, float]) -> str:
    """Emit DRIFT_EVENT for the profile's gateway, the verdict's reason in its payload; returns its id."""
    event = emit_event(**drift_event(verdict, profile, metrics_url, gauges))
    if event is None:  # emit_event returns None when events are off (no Prefect API to send them to)
        raise RuntimeError(f"drift detected but no event could be emitted ({verdict.reason}); set PREFECT_API_URL "
                           "to the server the retrain deployment's trigger lives on")
    get_run_logger().warning("emitted %s (%s): %s", DRIFT_EVENT, event.id, verdict.reason)
    return str(event.id)
