"""Whether live traffic has moved far enough from what the deployed threshold was fitted for to retrain.

The gateway exports the figures (escalate.serving.metrics); `parse_gauges` reads its /metrics page and
`judge` holds them against three limits, one per way a calib-fitted threshold stops holding:

- score shift: PSI of the live router scores against the deployment's first ones above `psi`
  (0.25: "a shift that matters", the alert rule's threshold);
- accept accuracy: the upper end of the shadow labels' Wilson 95% interval below what calib predicted
  at the threshold (less `accept_accuracy_margin`), so keeping is wrong more often than the threshold
  was fitted for, beyond sampling noise;
- escalation rate: more than `escalation_rate_delta` away from calib's rate at the threshold, either
  way (higher costs more; lower keeps questions calib would have escalated).

A gauge that is missing or NaN (too few requests yet, shadow labels off, a bundle that does not say what
calib predicted) gives its limit no verdict: an unmeasured figure never triggers a retrain. The
drift-watch flow (flows/drift_watch.py) emits DRIFT_EVENT when any limit is crossed; a trigger on the
`retrain` deployment (prefect.yaml) runs it with the verdict's reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

DRIFT_EVENT = "escalate.drift.detected"  # the Prefect event the retrain deployment's trigger expects
PSI = "escalate_score_psi"
SHADOW_HIGH = "escalate_shadow_accept_accuracy_high"
SHADOW_LABELS = "escalate_shadow_labels"
CALIB_ACCEPT = "escalate_calib_accept_accuracy"
LIVE_RATE = "escalate_live_escalation_rate"
CALIB_RATE = "escalate_calib_escalation_rate"
GAUGES = (PSI, SHADOW_HIGH, SHADOW_LABELS, CALIB_ACCEPT, LIVE_RATE, CALIB_RATE)
DRIFT, NO_DRIFT, NO_VERDICT = "drift", "no-drift", "no-verdict"


@dataclass(frozen=True)
class DriftLimits:
    """The limits drift is judged by (the drift-watch deployment's parameters; these are the defaults)."""

    psi: float = 0.25
    accept_accuracy_margin: float = 0.0
    escalation_rate_delta: float = 0.15

    def __post_init__(self) -> None:
        if not (math.isfinite(self.psi) and self.psi > 0):
            raise ValueError(f"psi_limit must be a positive number (0.25 is a shift that matters); got {self.psi}")
        if not 0 <= self.accept_accuracy_margin < 1:
            raise ValueError("accept_accuracy_margin must be in [0, 1) (0: any shortfall beyond noise); "
                             f"got {self.accept_accuracy_margin}")
        if not 0 < self.escalation_rate_delta < 1:
            raise ValueError("escalation_rate_delta must be in (0, 1) (a difference of two rates); "
                             f"got {self.escalation_rate_delta}")


DEFAULT_LIMITS = DriftLimits()


@dataclass(frozen=True)
class Check:
    """One limit: crossed (True/False), or None when a gauge it needs is missing or NaN."""

    name: str
    crossed: bool | None
    detail: str


@dataclass(frozen=True)
class DriftVerdict:
    checks: tuple[Check, ...]

    @property
    def drifted(self) -> bool:
        return any(c.crossed for c in self.checks)

    @property
    def status(self) -> str:
        if self.drifted:
            return DRIFT
        return NO_DRIFT if any(c.crossed is not None for c in self.checks) else NO_VERDICT

    @property
    def reason(self) -> str:
        """One line: the crossed limits' figures when drifted, else every check's."""
        shown = [c for c in self.checks if c.crossed] if self.drifted else self.checks
        return f"{self.status}: " + "; ".join(c.detail for c in shown)


def parse_gauges(text: str, source: str = "the page") -> dict[str, float]:
    """The unlabelled samples of a Prometheus text page (the gateway's drift gauges have no labels)."""
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as e:
        raise ValueError(f"{source} is not a Prometheus text page ({e}); point metrics_url at the gateway's "
                         "/metrics") from e
    return {s.name: float(s.value) for f in families for s in f.samples if not s.labels}


def figures(gauges: Mapping[str, float]) -> dict[str, float]:
    """The measured (finite) drift gauges: what an event's payload carries (JSON has no NaN)."""
    return {n: gauges[n] for n in GAUGES if math.isfinite(gauges.get(n, math.nan))}


def drift_event(verdict: DriftVerdict, profile: str, metrics_url: str, gauges: Mapping[str, float]) -> dict[str, Any]:
    """The event the retrain deployment's trigger expects (prefect.events.emit_event's arguments): resource
    `escalate.gateway.<profile>`, so a trigger retrains only the profile whose gateway drifted, and the
    verdict's reason in the payload, which the trigger passes to `retrain` as its `reason`."""
    return {"event": DRIFT_EVENT,
            "resource": {"prefect.resource.id": f"escalate.gateway.{profile}", "prefect.resource.name": metrics_url},
            "payload": {"profile": profile, "reason": verdict.reason, "gauges": figures(gauges),
                        "crossed": [c.name for c in verdict.checks if c.crossed]}}


def _measured(gauges: Mapping[str, float], *names: str) -> list[float] | None:
    values = [gauges.get(n, math.nan) for n in names]
    return None if any(not math.isfinite(v) for v in values) else values


def _unmeasured(name: str, what: str, *gauges: str) -> Check:
    return Check(name, None, f"{what} not measured ({' or '.join(gauges)} missing or NaN)")


def judge(gauges: Mapping[str, float], limits: DriftLimits = DEFAULT_LIMITS) -> DriftVerdict:
    """Hold the gateway's gauges against `limits`; each check's detail names its figure and its limit."""
    checks = []
    if (psi := _measured(gauges, PSI)) is None:
        checks.append(_unmeasured("score_psi", "score PSI", PSI))
    else:
        crossed = psi[0] > limits.psi
        checks.append(Check("score_psi", crossed, f"score PSI {psi[0]:.3f} {'>' if crossed else '<='} "
                            f"limit {limits.psi:g}"))
    if (accept := _measured(gauges, SHADOW_HIGH, CALIB_ACCEPT)) is None:
        checks.append(_unmeasured("accept_accuracy", "shadow accept-accuracy", SHADOW_HIGH, CALIB_ACCEPT))
    else:
        high, calib = accept
        limit = calib - limits.accept_accuracy_margin
        labels = gauges.get(SHADOW_LABELS, math.nan)
        over = f" over {labels:.0f} labels" if math.isfinite(labels) else ""
        crossed = high < limit
        checks.append(Check("accept_accuracy", crossed, f"shadow accept-accuracy 95% upper bound {high:.3f}{over} "
                            f"{'<' if crossed else '>='} limit {limit:.3f} (calib's {calib:.3f} less margin "
                            f"{limits.accept_accuracy_margin:g})"))
    if (rates := _measured(gauges, LIVE_RATE, CALIB_RATE)) is None:
        checks.append(_unmeasured("escalation_rate", "escalation rate", LIVE_RATE, CALIB_RATE))
    else:
        live, calib = rates
        crossed = abs(live - calib) > limits.escalation_rate_delta
        checks.append(Check("escalation_rate", crossed, f"escalation rate {live:.3f} vs calib's {calib:.3f}: "
                            f"|difference| {abs(live - calib):.3f} {'>' if crossed else '<='} limit "
                            f"{limits.escalation_rate_delta:g}"))
    return DriftVerdict(tuple(checks))
