"""Threshold sweeps, reference strategies and per-strategy summaries on hand-computed records."""

import math

import numpy as np
import pandas as pd
import pytest

from escalate.evaluation import curves, metrics
from tests.records_factory import records


def random_records(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    """A score independent of correctness: routing by it is random mixing."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "id": [f"q{i}" for i in range(n)],
            "score": rng.random(n),
            "slm_correct": rng.random(n) < 0.55,
            "llm_correct": rng.random(n) < 0.85,
            "slm_cost": np.full(n, 1.0),
            "llm_cost": np.full(n, 20.0),
            "router_cost": np.zeros(n),
            "slm_latency_s": np.full(n, 0.2),
            "llm_latency_s": np.full(n, 1.0),
            "slm_latency_model_s": np.full(n, 0.2),
            "llm_latency_model_s": np.full(n, 1.0),
            "router_latency_s": np.zeros(n),
            "router_latency_model_s": np.zeros(n),
        }
    )


# Hand-computed reference values for records() (n_points = 101).
# Oracle escalation order a, b, d, c (pregen, no router): points (cost, acc) (0.1, .5), (0.28, .75), ... (1, .75)
TOA_ORACLE = 0.5 * (0.28 - 0.1) + 0.75 * (1 - 0.28)
# Random staircase: x_k = k/100 costs 0.1 + 0.9 x_k and reaches 0.5 + 0.25 x_k until the next point
TOA_RANDOM = sum((0.5 + 0.25 * k / 100) * 0.009 for k in range(100))
# Cascade by score escalates a, b, c, d in turn: costs .14, .34, .54, .94, 1.14 with accuracies .5, .75, ...
TOA_CASCADE = 0.5 * (0.34 - 0.14) + 0.75 * (1 - 0.34)


def test_sweep_has_both_endpoints_and_at_least_101_points():
    curve = curves.sweep(records(), "cascade")
    assert list(curve.columns) == list(curves.CURVE_COLUMNS)
    assert len(curve) >= 101
    assert curve["call_rate"].iloc[0] == 0.0 and curve["call_rate"].iloc[-1] == 1.0
    assert curve["threshold"].iloc[-1] == math.inf
    assert curve["call_rate"].is_monotonic_increasing
    assert sorted(set(curve["call_rate"])) == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_sweep_normalizes_cost_by_llm_only():
    cascade = curves.sweep(records(), "cascade")
    pregen = curves.sweep(records(), "pregen")
    # nothing escalated: router + SLM for both modes; all escalated: the cascade also paid every SLM attempt
    assert cascade["cost"].iloc[0] == pytest.approx((2 + 5) / 50)
    assert pregen["cost"].iloc[0] == pytest.approx((2 + 5) / 50)
    assert cascade["cost"].iloc[-1] == pytest.approx((2 + 5 + 50) / 50)
    assert pregen["cost"].iloc[-1] == pytest.approx((2 + 50) / 50)


def test_cascade_costs_more_than_pregen_by_the_wasted_slm_attempts():
    cascade = curves.sweep(records(), "cascade")
    pregen = curves.sweep(records(), "pregen")
    at_half = cascade["call_rate"] == 0.5  # a and b escalated, one SLM cost unit wasted on each
    assert (cascade.loc[at_half, "cost"] - pregen.loc[at_half, "cost"]).to_numpy() == pytest.approx(2 / 50)
    assert (cascade["accuracy"] == pregen["accuracy"]).all()
    assert (cascade.loc[at_half, "arol_s"] == 0.75).all() and (pregen["arol_s"] == 0).all()


@pytest.mark.parametrize("refused", [False, True])
def test_reference_points_are_slm_only_and_llm_only(refused: bool):
    # SLM-only keeps every SLM answer, a refusal included: the fallback is the strategy's, not the model's
    refs = curves.reference_points(records().assign(slm_refused=refused))
    assert refs.loc[curves.SLM_ONLY, ["call_rate", "cost", "accuracy", "agl_s"]].tolist() == pytest.approx(
        [0.0, 0.1, 0.5, 7 / 4]
    )
    assert refs.loc[curves.LLM_ONLY, ["call_rate", "cost", "accuracy", "agl_s", "arol_s"]].tolist() == (
        pytest.approx([1.0, 1.0, 0.75, 23 / 4, 0.0])
    )


def test_oracle_escalates_gains_first_then_neutral_queries_cheapest_first():
    oracle = curves.oracle_records(records().assign(slm_refused=True))
    assert "slm_refused" not in oracle
    order = oracle.sort_values("score")["id"].tolist()
    assert order == ["a", "b", "d", "c"]
    assert (oracle["router_cost"] == 0).all()
    assert metrics.toa(curves.sweep(oracle, "pregen")) == pytest.approx(TOA_ORACLE)


def test_random_curve_is_linear_mixing_with_apgr_one_half():
    curve = curves.random_curve(0.5, 0.75, 0.1)
    assert len(curve) == 101
    assert curve.iloc[50].tolist() == pytest.approx([0.5, 0.55, 0.625])
    assert metrics.apgr(curve, 0.5, 0.75) == pytest.approx(0.5)
    assert metrics.toa(curve) == pytest.approx(TOA_RANDOM)


def test_summarize_gives_every_figure_for_a_strategy():
    summary = curves.summarize(records(), "cascade", a_slm=0.5, a_llm=0.75, is_probability=True)
    expected = {
        "n": 4,
        "apgr": (0.25 * (0.5 + 0.75) / 2 + 0.75 * 0.75 - 0.5) / 0.25,
        "cpt50": 0.125,
        "cpt80": 0.2,
        "toa": TOA_CASCADE,
        "toa_random": TOA_RANDOM,
        "toa_oracle": TOA_ORACLE,
        "togr": (TOA_CASCADE - TOA_RANDOM) / (TOA_ORACLE - TOA_RANDOM),
        "saving_at_iso_accuracy": 0.66,
        "op_threshold": summary["op_threshold"],  # a quantile between 0.1 and 0.2, checked below
        "op_call_rate": 0.25,
        "op_cost": 0.34,
        "op_accuracy": 0.75,
        "agl_s": (6 + 2 + 1 + 3) / 4,
        "arol_s": 1 / 4,
        "agl_model_s": (2.4 + 0.8 + 0.4 + 1.2) / 4,
        "arol_model_s": 0.4 / 4,
        "auroc": 1.0,
        "ece": (0.1 + 0.2 + 0.7 + 0.6) / 4,
        "brier": (0.01 + 0.04 + 0.49 + 0.36) / 4,
    }
    assert summary == pytest.approx(expected)
    assert 0.1 < summary["op_threshold"] <= 0.2


def test_summarize_reads_its_figures_off_the_curve_it_is_given():
    curve = curves.sweep(records(), "cascade")
    kwargs = {"a_slm": 0.5, "a_llm": 0.75, "is_probability": True}
    assert curves.summarize(records(), "cascade", curve=curve, **kwargs) == pytest.approx(
        curves.summarize(records(), "cascade", **kwargs))
    # every point at half the cost: the row follows the curve it was handed, not a sweep of its own
    halved = curves.summarize(records(), "cascade", curve=curve.assign(cost=curve["cost"] / 2), **kwargs)
    assert (halved["op_cost"], halved["saving_at_iso_accuracy"]) == pytest.approx((0.17, 0.83))


def test_summarize_marks_undefined_figures_nan():
    summary = curves.summarize(records(), "cascade", a_slm=0.5, a_llm=0.95)
    assert math.isnan(summary["cpt80"]) and math.isnan(summary["saving_at_iso_accuracy"])
    assert math.isnan(summary["agl_s"]) and math.isnan(summary["ece"])
    assert summary["auroc"] == 1.0  # AUROC only ranks, so it is reported for any score


def test_oracle_strategy_has_togr_one():
    summary = curves.summarize(curves.oracle_records(records()), "pregen", a_slm=0.5, a_llm=0.75)
    assert summary["togr"] == pytest.approx(1.0)


def test_random_routing_has_togr_and_apgr_near_random():
    data = random_records()
    a_slm, a_llm = data["slm_correct"].mean(), data["llm_correct"].mean()
    summary = curves.summarize(data, "pregen", a_slm=a_slm, a_llm=a_llm)
    assert summary["togr"] == pytest.approx(0.0, abs=0.05)
    assert summary["apgr"] == pytest.approx(0.5, abs=0.05)
    oracle = curves.summarize(curves.oracle_records(data), "pregen", a_slm=a_slm, a_llm=a_llm)
    assert oracle["togr"] == pytest.approx(1.0)


def test_sweep_rejects_an_unnormalizable_cost():
    with pytest.raises(ValueError, match="LLM-only cost"):
        curves.sweep(records().assign(llm_cost=0.0), "pregen")
