"""Drift on live traffic: the escalation rate over a sliding window, and how far the router's score
distribution has moved (PSI) since the deployment started serving.

The threshold was fitted on calib's scores. A bundle does not carry them (cascade.json has the
threshold, outcomes.parquet per-query test outcomes without scores), so the reference is the first
`reference_size` live scores of the deployment: PSI then says "traffic has changed since this
deployment began", not "traffic differs from calib". A new deployment (another strategy or
threshold) starts a new reference. Scores of fallback answers (SLM down or unscored) are no router
scores and are left out; they still count in the escalation rate.

PSI = sum over bins of (live - ref) * ln(live / ref), with bins at the reference's deciles; by the
usual reading, under 0.1 is stable, 0.1-0.25 a shift worth a look, over 0.25 a shift that matters.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Hashable

import numpy as np

BINS = 10
WINDOW = 1000  # answered requests (and scores) the live windows hold
REFERENCE = 1000  # live scores that make a deployment's reference
EPS = 1e-4  # an empty bin's share, so ln() stays finite
MIN_LIVE = 100  # fewer live scores than this: PSI is NaN (not yet measured), not noise


def psi(reference: np.ndarray, live: np.ndarray, bins: int = BINS) -> float:
    """Population stability index of `live` against `reference`, bins at the reference's quantiles."""
    if len(reference) == 0 or len(live) == 0:
        return math.nan
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    ref = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1) / len(reference)
    now = np.bincount(np.searchsorted(edges, live, side="right"), minlength=len(edges) + 1) / len(live)
    ref, now = np.clip(ref, EPS, None), np.clip(now, EPS, None)
    return float(np.sum((now - ref) * np.log(now / ref)))


class LiveDrift:
    """Sliding windows over answered requests; the gauges read `escalation_rate()` and `score_psi()` when
    /metrics is scraped, so a request pays two deque appends."""

    def __init__(self, window: int = WINDOW, reference_size: int = REFERENCE) -> None:
        self.reference_size = reference_size
        self._escalated: deque[bool] = deque(maxlen=window)
        self._live: deque[float] = deque(maxlen=window)
        self._reference: list[float] = []
        self._deployment: Hashable = None
        self._lock = threading.Lock()

    def observe(self, score: float, escalated: bool, deployment: Hashable, router_scored: bool = True) -> None:
        """One answered request; `deployment` identifies what scored it (a change restarts the reference)."""
        with self._lock:
            self._escalated.append(bool(escalated))
            if not router_scored or not math.isfinite(score):
                return
            if deployment != self._deployment:
                self._deployment, self._reference = deployment, []
                self._live.clear()
            if len(self._reference) < self.reference_size:
                self._reference.append(float(score))
            else:
                self._live.append(float(score))

    def escalation_rate(self) -> float:
        with self._lock:
            return sum(self._escalated) / len(self._escalated) if self._escalated else math.nan

    def score_psi(self) -> float:
        with self._lock:
            if len(self._reference) < self.reference_size or len(self._live) < MIN_LIVE:
                return math.nan
            reference, live = np.array(self._reference), np.array(self._live)
        return psi(reference, live)
