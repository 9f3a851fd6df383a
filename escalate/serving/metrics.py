"""The gateway's Prometheus metrics: requests, escalations, cost and latency, per route and model, the
drift gauges (escalate.serving.drift) that infra/prometheus/alerts.yml watches, and the shadow labels'
live accept-accuracy (escalate.serving.shadow) beside what calib predicted for the deployed threshold.

Each app gets its own CollectorRegistry, so two gateways in one process (tests) do not share counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from escalate.serving.drift import REFERENCE, WINDOW, LiveDrift
from escalate.serving.shadow import WINDOW as SHADOW_WINDOW
from escalate.serving.shadow import LiveAcceptance

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
COST_BUCKETS = (0.0, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("escalate_requests_total", "requests by route and HTTP status", ["route", "status"],
                                registry=r)
        self.answers = Counter("escalate_answers_total", "answers by the model that gave them and the strategy",
                               ["model", "strategy"], registry=r)
        self.escalations = Counter("escalate_escalations_total",
                                   "requests sent to the LLM, by reason (router: the strategy; slm_down: fallback)",
                                   ["reason"], registry=r)
        self.model_errors = Counter("escalate_model_unavailable_total", "requests that found a model down",
                                    ["model"], registry=r)
        self.latency = Histogram("escalate_request_latency_seconds", "gateway wall time per request, by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.step_latency = Histogram("escalate_step_latency_seconds", "time of each step of the cascade",
                                      ["step"], buckets=LATENCY_BUCKETS, registry=r)
        self.cost = Histogram("escalate_cost", "cost per answered request (the bundle's cost model), by model",
                              ["model"], buckets=COST_BUCKETS, registry=r)
        self.in_flight = Gauge("escalate_in_flight_requests", "requests answering or waiting for a worker", registry=r)
        self.drift = LiveDrift()
        Gauge("escalate_live_escalation_rate", f"share of the last {WINDOW} answered requests the LLM answered",
              registry=r).set_function(self.drift.escalation_rate)
        Gauge("escalate_score_psi", f"PSI of the last {WINDOW} router scores against the deployment's first "
              f"{REFERENCE} (NaN until both are there)", registry=r).set_function(self.drift.score_psi)
        self.shadow_requests = Counter("escalate_shadow_requests_total",
                                       "shadow calls to the LLM for kept answers: sent, dropped (queue full or "
                                       "budget spent), failed", ["outcome"], registry=r)
        self.acceptance = LiveAcceptance()
        accept = f"of the last {SHADOW_WINDOW} shadowed kept answers, the share the LLM agreed with"
        for suffix, read, what in (("", self.acceptance.accuracy, ""),
                                   ("_low", self.acceptance.low, ": Wilson 95% lower bound"),
                                   ("_high", self.acceptance.high, ": Wilson 95% upper bound")):
            Gauge(f"escalate_shadow_accept_accuracy{suffix}", f"{accept}{what} (NaN until one is labelled)",
                  registry=r).set_function(read)
        Gauge("escalate_shadow_labels", "shadow labels the live accept-accuracy is computed over",
              registry=r).set_function(lambda: self.acceptance.counts()[1])
        self.calib = {key: Gauge(f"escalate_calib_{key}", f"the calib split's {key.replace('_', ' ')} at the deployed "
                                 "threshold (the bundle's evaluation; NaN when it does not say)", registry=r)
                      for key in ("accept_accuracy", "escalation_rate")}
        self.set_calib({})

    def observe_answer(self, result: dict[str, Any], fallback: str | None) -> None:
        model = result["model"]
        self.answers.labels(model, result["strategy"]).inc()
        if result["escalated"]:
            self.escalations.labels(fallback or "router").inc()
        self.cost.labels(model).observe(float(result["cost"]))
        self.drift.observe(float(result["score"]), result["escalated"], (result["strategy"], result["threshold"]),
                           router_scored=fallback is None)
        for step in ("slm", "router", "llm"):
            seconds = float(result[f"latency_{step}_s"])
            if seconds > 0:
                self.step_latency.labels(step).observe(seconds)

    def set_calib(self, figures: Mapping[str, float]) -> None:
        """What calib predicted for the deployment now served (shadow.calib_figures); missing: NaN."""
        for key, gauge in self.calib.items():
            gauge.set(figures.get(key, math.nan))

    def render(self) -> bytes:
        return generate_latest(self.registry)
