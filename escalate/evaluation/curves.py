"""Threshold sweeps, the reference strategies, and every METRICS.md figure of one strategy.

A sweep turns one strategy's stored records into its accuracy/cost/call-rate curve without
generating anything (STYLE.md 9). The random and oracle references are built from the same
records' SLM and LLM columns, so ToGR compares a strategy with mixes of exactly its own models.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from escalate.evaluation import decision, metrics
from escalate.evaluation.thresholds import REFUSED_COLUMN, quantile_grid, refusals

CURVE_COLUMNS = (
    "threshold",
    "call_rate",
    "cost",
    "accuracy",
    "agl_s",
    "arol_s",
    "agl_model_s",
    "arol_model_s",
)
SLM_ONLY, LLM_ONLY = "SLM-only", "LLM-only"


def _total_llm_cost(records: pd.DataFrame) -> float:
    """The normalizer Σ cost_LLM-only(q); without a positive one no cost can be normalized."""
    total = float(records["llm_cost"].sum())
    if not total > 0:
        raise ValueError(f"LLM-only cost must be > 0 to normalize costs, got {total}")
    return total


def _point(outcome: pd.DataFrame, total_llm_cost: float) -> dict[str, float]:
    """One curve point from per-query outcomes."""
    return {
        "call_rate": float(outcome["escalated"].mean()),
        "cost": float(outcome["cost"].sum()) / total_llm_cost,
        "accuracy": float(outcome["correct"].mean()),
        "agl_s": metrics.agl(outcome),
        "arol_s": metrics.arol(outcome),
        "agl_model_s": metrics.agl(outcome, modeled=True),
        "arol_model_s": metrics.arol(outcome, modeled=True),
    }


def sweep(records: pd.DataFrame, mode: str, n_points: int = 101) -> pd.DataFrame:
    """The strategy's curve: one row per threshold (n_points + 1 rows, one more from −inf where the SLM
    refuses: quantile_grid), columns CURVE_COLUMNS.

    Cost is normalized, Σ cost / Σ llm_cost, so LLM-only is 1 and a cascade can exceed it. Each
    query's outcome under a threshold's decision comes from metrics.decided, so the curve prices
    queries exactly as a single threshold does; the sums over thresholds are decision.sweep's.
    """
    metrics.check_records(records, mode)
    total = _total_llm_cost(records)
    scores, refused = records["score"].to_numpy(float), refusals(records)
    grid = quantile_grid(scores, n_points, never=bool(refused.any()))
    columns = ["escalated", "cost", "correct", "latency_s", "overhead_s", "latency_model_s", "overhead_model_s"]

    def figures(d: decision.Decision) -> np.ndarray:
        return metrics.decided(records, mode, d)[columns].to_numpy(float)

    means = decision.sweep(scores, grid, figures, refused) / len(records)
    mean_llm_cost = total / len(records)
    return pd.DataFrame(
        {
            "threshold": grid,
            "call_rate": means[:, 0],
            "cost": means[:, 1] / mean_llm_cost,
            "accuracy": means[:, 2],
            "agl_s": means[:, 3],
            "arol_s": means[:, 4],
            "agl_model_s": means[:, 5],
            "arol_model_s": means[:, 6],
        },
        columns=list(CURVE_COLUMNS),
    )


def oracle_records(records: pd.DataFrame) -> pd.DataFrame:
    """Records whose score makes the pre-generation oracle: knows SLM correctness, pays no router.

    Escalation order (lowest score first): SLM wrong and LLM right (every one gains accuracy),
    SLM wrong and LLM wrong, SLM right and LLM right, SLM right and LLM wrong (every one loses).
    Within a group the cheapest escalation (llm_cost − slm_cost) goes first, so the oracle is
    also the cost-aware upper bound ToGR needs. Scores are distinct ranks in [0, 1).
    """
    slm_wrong = ~records["slm_correct"].to_numpy(bool)
    llm_right = records["llm_correct"].to_numpy(bool)
    group = np.where(slm_wrong, np.where(llm_right, 0, 1), np.where(llm_right, 2, 3))
    extra_cost = records["llm_cost"].to_numpy(float) - records["slm_cost"].to_numpy(float)
    order = np.lexsort((np.arange(len(records)), extra_cost, group))
    rank = np.empty(len(records), dtype=float)
    rank[order] = np.arange(len(records))
    return _models_only(records).assign(score=rank / len(records))


def _models_only(records: pd.DataFrame) -> pd.DataFrame:
    """The records with no router to pay and no refusal fallback: each query goes to exactly the model picked."""
    return records.drop(columns=[REFUSED_COLUMN], errors="ignore").assign(
        router_cost=0.0, router_latency_s=0.0, router_latency_model_s=0.0)


def random_curve(a_slm: float, a_llm: float, c_slm: float, n_points: int = 101) -> pd.DataFrame:
    """Expected curve of sending a random fraction x to the LLM before generation (no noise).

    A(x) = (1 − x)·A_SLM + x·A_LLM and C(x) = (1 − x)·C_SLM + x (LLM-only = 1), at n_points call
    rates from 0 to 1, so its ToA is a staircase over as many points as a swept strategy's.
    """
    x = np.linspace(0.0, 1.0, n_points)
    return pd.DataFrame(
        {"call_rate": x, "cost": (1 - x) * c_slm + x, "accuracy": (1 - x) * a_slm + x * a_llm}
    )


def reference_points(records: pd.DataFrame) -> pd.DataFrame:
    """SLM-only and LLM-only (index SLM_ONLY, LLM_ONLY): neither pays a router nor the other model."""
    unrouted = _models_only(records)
    total = _total_llm_cost(records)
    rows = {
        SLM_ONLY: _point(metrics.outcomes(unrouted, "pregen", -math.inf), total),
        LLM_ONLY: _point(metrics.outcomes(unrouted, "pregen", math.inf), total),
    }
    return pd.DataFrame.from_dict(rows, orient="index")


def reference_toas(records: pd.DataFrame, n_points: int = 101) -> tuple[float, float]:
    """(ToA_random, ToA_oracle) from the records' own SLM and LLM columns."""
    refs = reference_points(records)
    random = random_curve(
        refs.at[SLM_ONLY, "accuracy"], refs.at[LLM_ONLY, "accuracy"], refs.at[SLM_ONLY, "cost"], n_points
    )
    oracle = sweep(oracle_records(records), "pregen", n_points)
    return metrics.toa(random), metrics.toa(oracle)


def _operating_figures(curve: pd.DataFrame, a_llm: float, delta: float) -> dict[str, float]:
    """The cheapest point within δ of LLM-only accuracy, and its latencies; NaN if none."""
    point = metrics.operating_point(curve, a_llm, delta)
    fields = {
        "op_threshold": "threshold",
        "op_call_rate": "call_rate",
        "op_cost": "cost",
        "op_accuracy": "accuracy",
        "agl_s": "agl_s",
        "arol_s": "arol_s",
        "agl_model_s": "agl_model_s",
        "arol_model_s": "arol_model_s",
    }
    return {key: math.nan if point is None else float(point[col]) for key, col in fields.items()}


def _confidence_figures(records: pd.DataFrame, is_probability: bool) -> dict[str, float]:
    """AUROC for any score (it only ranks); ECE and Brier only for a score meant as P(SLM correct)."""
    score, correct = records["score"].to_numpy(float), records["slm_correct"].to_numpy(bool)
    return {
        "auroc": metrics.auroc(score, correct),
        "ece": metrics.ece(score, correct) if is_probability else math.nan,
        "brier": metrics.brier(score, correct) if is_probability else math.nan,
    }


def summarize(
    records: pd.DataFrame,
    mode: str,
    *,
    a_slm: float,
    a_llm: float,
    delta: float = 0.02,
    n_points: int = 101,
    is_probability: bool = False,
    curve: pd.DataFrame | None = None,
) -> dict[str, float]:
    """Every METRICS.md figure of one strategy, as a flat dict (one report-table row).

    a_slm and a_llm are the SLM-only and LLM-only accuracies APGR, CPT and iso-accuracy are
    measured against (the base SLM, which a strategy's own `slm_correct` may differ from);
    ToA_random and ToA_oracle come from the records themselves. NaN marks an undefined figure.
    `curve` is the strategy's sweep(records, mode, n_points) where the caller already drew it: pass
    the one the plots draw, so the row's figures are read off the plotted curve. None sweeps here.
    """
    if curve is None:
        curve = sweep(records, mode, n_points)
    toa_random, toa_oracle = reference_toas(records, n_points)
    strategy_toa = metrics.toa(curve)
    return {
        "n": len(records),
        "apgr": metrics.apgr(curve, a_slm, a_llm),
        "cpt50": metrics.cpt(curve, 0.5, a_slm, a_llm),
        "cpt80": metrics.cpt(curve, 0.8, a_slm, a_llm),
        "toa": strategy_toa,
        "toa_random": toa_random,
        "toa_oracle": toa_oracle,
        "togr": metrics.togr(strategy_toa, toa_random, toa_oracle),
        "saving_at_iso_accuracy": metrics.saving_at_iso_accuracy(curve, a_llm, delta),
        **_operating_figures(curve, a_llm, delta),
        **_confidence_figures(records, is_probability),
    }
