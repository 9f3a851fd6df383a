"""Every metric on small hand-computed examples (METRICS.md)."""

import math

import numpy as np
import pandas as pd
import pytest

from escalate.evaluation import metrics
from tests.records_factory import records


def curve(points: list[tuple[float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(points, columns=["call_rate", "cost", "accuracy"])


# --- outcomes, AGL, AROL ---------------------------------------------------------------


def test_cascade_pays_the_slm_attempt_on_escalated_queries():
    out = metrics.outcomes(records(), "cascade", 0.25)
    assert out["escalated"].tolist() == [True, True, False, False]
    assert out["correct"].tolist() == [True, False, True, True]
    assert out["cost"].tolist() == pytest.approx([11.5, 11.5, 2.5, 1.5])
    assert out["latency_s"].tolist() == pytest.approx([6.0, 8.0, 1.0, 3.0])
    assert metrics.agl(out) == pytest.approx(4.5)
    assert metrics.arol(out) == pytest.approx((1.0 + 2.0) / 4)
    assert metrics.agl(out, modeled=True) == pytest.approx((2.4 + 3.2 + 0.4 + 1.2) / 4)
    assert metrics.arol(out, modeled=True) == pytest.approx((0.4 + 0.8) / 4)


def test_pregen_pays_only_the_chosen_model_and_has_no_routing_overhead():
    out = metrics.outcomes(records(), "pregen", 0.25)
    assert out["correct"].tolist() == [True, False, True, True]
    assert out["cost"].tolist() == pytest.approx([10.5, 10.5, 2.5, 1.5])
    assert metrics.agl(out) == pytest.approx((5.0 + 6.0 + 1.0 + 3.0) / 4)
    assert metrics.arol(out) == 0.0
    assert metrics.agl(out, modeled=True) == pytest.approx((2.0 + 2.4 + 0.4 + 1.2) / 4)


def test_a_kept_refusal_escalates_after_paying_the_slm_that_refused():
    refusing = records().assign(slm_refused=[False, False, True, False])  # c is kept at 0.25, and refuses
    for mode, router_paid_slm in (("cascade", True), ("pregen", False)):
        out = metrics.outcomes(refusing, mode, 0.25)
        assert out["escalated"].tolist() == [True, True, True, False]
        assert out["correct"].tolist() == [True, False, True, True]  # c gets the LLM's answer
        assert out["cost"][2] == pytest.approx(0.5 + 2.0 + 20.0)  # router + the SLM's refusal + the LLM
        assert out["latency_s"][2] == pytest.approx(1.0 + 5.0)
        assert out["overhead_s"][2] == pytest.approx(1.0)  # the refusal's time was spent for nothing
        assert out["cost"][0] == pytest.approx(10.5 + (1.0 if router_paid_slm else 0.0))
    # refusals escalate at the lowest finite threshold too; only −inf serves them (SLM-only)
    assert metrics.outcomes(refusing, "pregen", -1e300)["escalated"].tolist() == [False, False, True, False]
    assert not metrics.outcomes(refusing, "pregen", -math.inf)["escalated"].any()
    assert not metrics.outcomes(records(), "pregen", -1e300)["escalated"].any()  # no column: no refusals


def test_records_are_checked():
    with pytest.raises(ValueError, match="unknown mode"):
        metrics.outcomes(records(), "parallel", 0.5)
    with pytest.raises(KeyError, match="llm_cost"):
        metrics.outcomes(records().drop(columns="llm_cost"), "cascade", 0.5)
    with pytest.raises(ValueError, match="finite"):
        metrics.outcomes(records().assign(score=[0.1, -np.inf, 0.3, 0.4]), "cascade", 0.5)
    with pytest.raises(ValueError, match="nulls"):
        metrics.outcomes(records().assign(score=[0.1, np.nan, 0.3, 0.4]), "cascade", 0.5)


# --- confidence quality ----------------------------------------------------------------


def test_auroc_counts_correctly_ordered_pairs():
    # positives 0.35, 0.8 against negatives 0.1, 0.4: 3 of 4 pairs ordered right
    assert metrics.auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)


def test_auroc_of_a_perfect_score_is_one_and_undefined_with_one_class():
    assert metrics.auroc([0.2, 0.1, 0.9, 0.7], [False, False, True, True]) == 1.0
    assert math.isnan(metrics.auroc([0.2, 0.9], [True, True]))


def test_ece_weights_each_bin_gap_by_its_size():
    # bin [0.1,0.2): conf .15 acc .5; bin [0.8,0.9): conf .85 acc 1; bin [0.9,1]: conf .95 acc 0
    expected = 2 / 5 * 0.35 + 2 / 5 * 0.15 + 1 / 5 * 0.95
    assert metrics.ece([0.15, 0.15, 0.85, 0.85, 0.95], [0, 1, 1, 1, 0]) == pytest.approx(expected)


def test_ece_of_perfectly_calibrated_bins_is_zero():
    conf = [0.25] * 4 + [0.75] * 4
    correct = [1, 0, 0, 0] + [1, 1, 1, 0]
    assert metrics.ece(conf, correct) == pytest.approx(0.0)


def test_bins_are_equal_width_with_one_in_the_last_bin():
    bins = metrics.reliability_bins([0.0, 0.05, 0.95, 1.0], [0, 1, 1, 1])
    assert bins["lo"].tolist() == [0.0, 0.9]
    assert bins["count"].tolist() == [2, 2]
    assert bins["accuracy"].tolist() == [0.5, 1.0]
    # averaging within a bin is what separates ECE from a per-sample gap
    assert metrics.ece([0.0, 0.05, 0.95, 1.0], [0, 1, 1, 1]) == pytest.approx(0.5 * 0.475 + 0.5 * 0.025)


def test_brier_is_mean_squared_error():
    assert metrics.brier([0.9, 0.2, 0.6], [1, 0, 0]) == pytest.approx((0.01 + 0.04 + 0.36) / 3)


def test_confidences_outside_unit_interval_are_rejected():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.ece([0.5, 1.5], [1, 0])


# --- quality versus cost ---------------------------------------------------------------

CONCAVE = curve([(0.0, 0.1, 0.5), (0.25, 0.3, 0.9), (1.0, 1.0, 1.0)])


def test_apgr_integrates_accuracy_over_call_rate_by_trapezoid():
    area = 0.25 * (0.5 + 0.9) / 2 + 0.75 * (0.9 + 1.0) / 2
    assert metrics.apgr(CONCAVE, 0.5, 1.0) == pytest.approx((area - 0.5) / 0.5)
    # the order of rows must not matter
    assert metrics.apgr(CONCAVE.iloc[::-1], 0.5, 1.0) == pytest.approx(0.775)


def test_apgr_is_nan_without_a_gap_and_needs_both_endpoints():
    assert math.isnan(metrics.apgr(CONCAVE, 0.7, 0.7))
    with pytest.raises(ValueError, match="span"):
        metrics.apgr(CONCAVE.iloc[1:], 0.5, 1.0)


def test_cpt_interpolates_between_curve_points():
    # target 0.75 lies between (0, 0.5) and (0.25, 0.9)
    assert metrics.cpt(CONCAVE, 0.5, 0.5, 1.0) == pytest.approx(0.25 * 0.25 / 0.4)
    assert metrics.cpt(CONCAVE, 0.8, 0.5, 1.0) == pytest.approx(0.25)
    assert metrics.cpt(CONCAVE, 0.0, 0.5, 1.0) == 0.0


def test_cpt_is_nan_when_never_reached_or_no_gap():
    assert math.isnan(metrics.cpt(CONCAVE, 0.8, 0.5, 1.2))
    assert math.isnan(metrics.cpt(CONCAVE, 0.5, 0.6, 0.6))


def test_toa_integrates_the_best_accuracy_affordable_at_each_cost():
    points = curve([(0, 0.1, 0.5), (0, 0.4, 0.8), (0, 0.3, 0.6), (0, 1.2, 0.9), (0, 0.6, 0.7)])
    # 0 below 0.1, then 0.5 to 0.3, 0.6 to 0.4, 0.8 (the 0.7 point is dominated) to 1; 1.2 is off the range
    assert metrics.toa(points) == pytest.approx(0.5 * 0.2 + 0.6 * 0.1 + 0.8 * 0.6)


def test_toa_is_zero_below_the_cheapest_point():
    assert metrics.toa(curve([(0, 0.5, 1.0)])) == pytest.approx(0.5)
    assert metrics.toa(curve([(0, 1.5, 1.0)])) == 0.0


def test_togr_places_a_strategy_between_random_and_oracle():
    assert metrics.togr(0.7, 0.6, 0.8) == pytest.approx(0.5)
    assert metrics.togr(0.6, 0.6, 0.8) == 0.0
    assert metrics.togr(0.8, 0.6, 0.8) == 1.0
    assert math.isnan(metrics.togr(0.7, 0.6, 0.6))


def test_saving_at_iso_accuracy_takes_the_cheapest_point_within_delta():
    points = curve([(0, 0.2, 0.70), (0, 0.5, 0.78), (0, 0.4, 0.77), (0, 1.0, 0.80)])
    assert metrics.saving_at_iso_accuracy(points, 0.8, delta=0.02) == pytest.approx(0.5)
    assert metrics.saving_at_iso_accuracy(points, 0.8, delta=0.03) == pytest.approx(0.6)
    assert math.isnan(metrics.saving_at_iso_accuracy(points, 0.9, delta=0.02))
    assert metrics.operating_point(points, 0.9) is None
