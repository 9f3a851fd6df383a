"""Per-query outcomes and the figures of METRICS.md, as pure functions of stored records.

Everything is computed from per-query records (STYLE.md 9), so a figure can be recomputed offline
without generating again. Ratios whose denominator vanishes (A_LLM == A_SLM, an oracle no better
than random mixing) are NaN rather than an error: a degenerate split should still yield a report
that shows the figure as undefined.

A curve is a DataFrame with at least `call_rate`, `cost` (normalized, LLM-only = 1) and `accuracy`,
one row per threshold (see curves.sweep).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.metrics import roc_auc_score

from escalate.evaluation import decision
from escalate.evaluation.thresholds import TOL, cheapest_meeting, refusals

RECORD_COLUMNS = (
    "id",
    "score",
    "slm_correct",
    "llm_correct",
    "slm_cost",
    "llm_cost",
    "router_cost",
    "slm_latency_s",
    "llm_latency_s",
    "slm_latency_model_s",
    "llm_latency_model_s",
    "router_latency_s",
    "router_latency_model_s",
)


def check_records(records: pd.DataFrame, mode: str) -> None:
    """Reject records a figure would silently misread: missing columns, nulls, non-finite scores."""
    decision.check_mode(mode)
    missing = [c for c in RECORD_COLUMNS if c not in records.columns]
    if missing:
        raise KeyError(f"records lack columns {missing}; required: {', '.join(RECORD_COLUMNS)}")
    if records.empty:
        raise ValueError("records are empty")
    nulls = [c for c in RECORD_COLUMNS if records[c].isna().any()]
    if nulls:
        raise ValueError(f"records hold nulls in {nulls}")
    if not np.isfinite(records["score"].to_numpy(float)).all():
        raise ValueError("scores must be finite (a -inf log-probability would escalate at every threshold)")


def outcomes(records: pd.DataFrame, mode: str, threshold: float, *, check: bool = True) -> pd.DataFrame:
    """What happens to each query at `threshold`: evaluation.decision's rule on the records' scores and refusals."""
    if check:  # a sweep checks once, not at each of its thresholds
        check_records(records, mode)
    return decided(records, mode, decision.decide(records["score"].to_numpy(float), threshold, refusals(records)))


def decided(records: pd.DataFrame, mode: str, d: decision.Decision) -> pd.DataFrame:
    """Per query under decision `d`: escalated, correct, cost, latencies (measured and modeled) and overhead.

    Both modes pay the router; what else each pays is decision.prices'. The routing overhead is
    the SLM time spent on queries the LLM ends up answering (AROL's summand): the wasted attempt,
    and the router's time where the router runs the SLM (records carry router time only for those,
    Router.slm_reads).
    """

    def col(name: str) -> np.ndarray:
        return records[name].to_numpy(float)

    def spent(router: str, slm: str, llm: str) -> np.ndarray:
        return d.spend(col(router), col(slm), col(llm), mode)

    wasted = d.wasted(mode)
    return pd.DataFrame(
        {
            "id": records["id"].to_numpy(),
            "escalated": d.escalated,
            "correct": d.answer(col("slm_correct"), col("llm_correct")).astype(bool),
            "cost": spent("router_cost", "slm_cost", "llm_cost"),
            "latency_s": spent("router_latency_s", "slm_latency_s", "llm_latency_s"),
            "latency_model_s": spent("router_latency_model_s", "slm_latency_model_s", "llm_latency_model_s"),
            "overhead_s": d.escalated * col("router_latency_s") + wasted * col("slm_latency_s"),
            "overhead_model_s": d.escalated * col("router_latency_model_s") + wasted * col("slm_latency_model_s"),
        }
    )


def agl(outcome: pd.DataFrame, *, modeled: bool = False) -> float:
    """Average generation latency: mean time from request to final answer (measured or modeled)."""
    return float(outcome["latency_model_s" if modeled else "latency_s"].mean())


def arol(outcome: pd.DataFrame, *, modeled: bool = False) -> float:
    """Average routing-overhead latency: (1/n) Σ escalated(q) · t_SLM(q), over all n queries."""
    return float(outcome["overhead_model_s" if modeled else "overhead_s"].mean())


def auroc(scores: ArrayLike, correct: ArrayLike) -> float:
    """AUROC of a score against SLM correctness; NaN when only one class occurs (undefined)."""
    correct = np.asarray(correct, dtype=bool)
    if correct.all() or not correct.any():
        return math.nan
    return float(roc_auc_score(correct, np.asarray(scores, dtype=float)))


def _check_confidence(conf: ArrayLike, correct: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    conf, correct = np.asarray(conf, dtype=float), np.asarray(correct, dtype=float)
    if conf.shape != correct.shape or conf.size == 0:
        raise ValueError(
            f"conf and correct must be non-empty and of one shape: {conf.shape}, {correct.shape}"
        )
    if not ((conf >= 0) & (conf <= 1)).all():
        raise ValueError("confidences must lie in [0, 1]")
    return conf, correct


def reliability_bins(conf: ArrayLike, correct: ArrayLike, n_bins: int = 10) -> pd.DataFrame:
    """Equal-width bins [k/n_bins, (k+1)/n_bins), the last closed at 1; empty bins are dropped.

    Returns columns lo, hi, count, confidence (mean), accuracy: what ECE sums and the reliability
    diagram draws, computed once so the two cannot disagree.
    """
    conf, correct = _check_confidence(conf, correct)
    index = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    frame = pd.DataFrame({"bin": index, "conf": conf, "correct": correct})
    stats = frame.groupby("bin").agg(
        count=("conf", "size"), confidence=("conf", "mean"), accuracy=("correct", "mean")
    )
    stats.insert(0, "hi", (stats.index + 1) / n_bins)
    stats.insert(0, "lo", stats.index / n_bins)
    return stats.reset_index(drop=True)


def ece(conf: ArrayLike, correct: ArrayLike, n_bins: int = 10) -> float:
    """Expected calibration error: Σ_b (|B_b|/n) · |acc(B_b) − conf(B_b)| over equal-width bins."""
    bins = reliability_bins(conf, correct, n_bins)
    weights = bins["count"] / bins["count"].sum()
    return float((weights * (bins["accuracy"] - bins["confidence"]).abs()).sum())


def brier(conf: ArrayLike, correct: ArrayLike) -> float:
    """Brier score: mean (conf − correct)²."""
    conf, correct = _check_confidence(conf, correct)
    return float(np.mean((conf - correct) ** 2))


def _by_call_rate(curve: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Call rates and accuracies sorted by call rate; the curve must span call rates 0 to 1."""
    ordered = curve.sort_values("call_rate", kind="stable")
    x, a = ordered["call_rate"].to_numpy(float), ordered["accuracy"].to_numpy(float)
    if x[0] > TOL or x[-1] < 1 - TOL:
        raise ValueError(f"curve must span call rates 0 and 1, spans [{x[0]}, {x[-1]}]")
    return x, a


def apgr(curve: pd.DataFrame, a_slm: float, a_llm: float) -> float:
    """APGR = (∫₀¹ A(x) dx − A_SLM) / (A_LLM − A_SLM), trapezoid rule; NaN when A_LLM == A_SLM."""
    if math.isclose(a_llm, a_slm, abs_tol=TOL):
        return math.nan
    x, a = _by_call_rate(curve)
    area = float(np.sum(np.diff(x) * (a[1:] + a[:-1]) / 2))
    return float((area - a_slm) / (a_llm - a_slm))


def cpt(curve: pd.DataFrame, p: float, a_slm: float, a_llm: float) -> float:
    """Smallest call rate at which A ≥ A_SLM + p · (A_LLM − A_SLM), interpolating linearly.

    NaN when no point reaches the target, and when A_LLM == A_SLM (no gap to close, so any call
    rate would "reach" it and the figure would flatter the strategy).
    """
    if math.isclose(a_llm, a_slm, abs_tol=TOL):
        return math.nan
    target = a_slm + p * (a_llm - a_slm)
    x, a = _by_call_rate(curve)
    reached = np.flatnonzero(a >= target - TOL)
    if reached.size == 0:
        return math.nan
    i = reached[0]
    if i == 0:
        return float(x[0])
    fraction = min(1.0, max(0.0, (target - a[i - 1]) / (a[i] - a[i - 1])))
    return float(x[i - 1] + fraction * (x[i] - x[i - 1]))


def toa(curve: pd.DataFrame) -> float:
    """Tradeoff area: exact ∫₀¹ Â(c) dc of the step function Â(c) = max{A_t : C_t ≤ c} (0 if none).

    Â is constant between sorted point costs, so the integral is a sum of rectangles; points that
    cost more than LLM-only (C > 1) add nothing.
    """
    ordered = curve.sort_values("cost", kind="stable")
    best = np.maximum.accumulate(ordered["accuracy"].to_numpy(float))
    starts = np.clip(ordered["cost"].to_numpy(float), 0.0, 1.0)
    ends = np.append(starts[1:], 1.0)
    return float(np.sum(best * (ends - starts)))


def togr(toa_strategy: float, toa_random: float, toa_oracle: float) -> float:
    """(ToA − ToA_random) / (ToA_oracle − ToA_random): 0 is random mixing, 1 the oracle.

    NaN when the oracle does no better than random mixing (e.g. the LLM is never right where the
    SLM is wrong), since no strategy can then be ranked between them.
    """
    if math.isclose(toa_oracle, toa_random, abs_tol=TOL):
        return math.nan
    return float((toa_strategy - toa_random) / (toa_oracle - toa_random))


def operating_point(curve: pd.DataFrame, a_llm: float, delta: float = 0.02) -> pd.Series | None:
    """The cheapest curve point with A ≥ A_LLM − δ (first by threshold on ties), None if none."""
    i = cheapest_meeting(curve["accuracy"], curve["cost"], a_llm, delta)
    return None if i is None else curve.iloc[i]


def saving_at_iso_accuracy(curve: pd.DataFrame, a_llm: float, delta: float = 0.02) -> float:
    """Largest cost saving 1 − C among points with A ≥ A_LLM − δ; NaN when no point qualifies."""
    point = operating_point(curve, a_llm, delta)
    return math.nan if point is None else float(1.0 - point["cost"])
