"""The `drift-watch` flow: read the gateway's /metrics, judge drift, and emit the event that retrains.

    python -m flows.drift_watch --metrics-url http://127.0.0.1:8000/metrics --profile tiny

Run it against the Prefect server the deployments live on (PREFECT_API_URL), or its event reaches no trigger.

escalate.drift_watch judges the gauges against the limits (this flow's parameters); when one is crossed
the flow emits `escalate.drift.detected` for the profile's gateway with the reason in its payload, and
the trigger on the `retrain` deployment (prefect.yaml) runs it with that reason, which the retrain run
records as its `escalate.retrain_reason` tag. No verdict (gauges not measured yet) emits nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from escalate.telemetry import disable_telemetry

disable_telemetry()

from prefect import flow  # noqa: E402

from escalate.config import load_profile  # noqa: E402
from escalate.drift_watch import DriftLimits, figures, judge, parse_gauges  # noqa: E402
from tasks.drift_watch import emit_drift, read_metrics  # noqa: E402

DEFAULTS = DriftLimits()


@flow(name="drift-watch", log_prints=True)
def drift_watch(
    metrics_url: str = "http://127.0.0.1:8000/metrics", profile: str = "tiny", root: str = ".",
    psi_limit: float = DEFAULTS.psi, accept_accuracy_margin: float = DEFAULTS.accept_accuracy_margin,
    escalation_rate_delta: float = DEFAULTS.escalation_rate_delta, timeout_s: float = 10.0,
) -> dict:
    """Judge the gateway's drift gauges; on drift, emit the event that runs `retrain` for `profile`."""
    limits = DriftLimits(psi_limit, accept_accuracy_margin, escalation_rate_delta)  # bad limits fail first
    load_profile(profile, Path(root).resolve())  # so does a profile the triggered retrain could not run
    gauges = parse_gauges(read_metrics(metrics_url, timeout_s), metrics_url)
    verdict = judge(gauges, limits)
    print(verdict.reason)
    event_id = emit_drift(verdict, profile, metrics_url, gauges) if verdict.drifted else None
    return {"status": verdict.status, "reason": verdict.reason, "event_id": event_id, "gauges": figures(gauges)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.drift_watch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics-url", default="http://127.0.0.1:8000/metrics", help="the gateway's /metrics")
    parser.add_argument("--profile", default="tiny", help="the profile the gateway serves (the one retrained)")
    parser.add_argument("--root", default=".", help="project root (configs/)")
    parser.add_argument("--psi-limit", type=float, default=DEFAULTS.psi,
                        help="drift when escalate_score_psi is above this (default: %(default)s)")
    parser.add_argument("--accept-accuracy-margin", type=float, default=DEFAULTS.accept_accuracy_margin,
                        help="drift when the shadow accept-accuracy's 95%% upper bound is below calib's less this "
                             "(default: %(default)s)")
    parser.add_argument("--escalation-rate-delta", type=float, default=DEFAULTS.escalation_rate_delta,
                        help="drift when the live escalation rate is further than this from calib's (default: %(default)s)")
    args = parser.parse_args(argv)
    result = drift_watch(metrics_url=args.metrics_url, profile=args.profile, root=args.root, psi_limit=args.psi_limit,
                         accept_accuracy_margin=args.accept_accuracy_margin,
                         escalation_rate_delta=args.escalation_rate_delta)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
