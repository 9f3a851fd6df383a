"""The one escalation rule and its bookkeeping (evaluation/decision.py), which every figure and the cascade share."""

from __future__ import annotations

import math

import numpy as np
import pytest

from escalate.evaluation import decision, metrics
from escalate.routers.base import Router
from tests.records_factory import records

INF = math.inf


def test_a_score_below_the_threshold_escalates_and_one_at_it_stays() -> None:
    assert decision.escalates([0.1, 0.5, 0.9], 0.5).tolist() == [True, False, False]
    assert decision.escalates([0.1, 0.5, 0.9], INF).tolist() == [True, True, True]
    assert decision.escalates([0.1, 0.5, 0.9], decision.KEEP_ALL).tolist() == [False, False, False]


@pytest.mark.parametrize("threshold", [decision.KEEP_ALL, 0.5, INF])
def test_a_kept_refusal_escalates_at_every_threshold_but_minus_infinity(threshold: float) -> None:
    d = decision.decide([0.9, 0.9, 0.1], threshold, refused=[True, False, False])
    assert d.escalated.tolist() == [True, threshold == INF, threshold > decision.KEEP_ALL]
    assert d.routed.tolist() == [threshold == INF, threshold == INF, threshold > decision.KEEP_ALL]
    assert decision.escalates([0.9, 0.9, 0.1], -INF, refused=[True, False, False]).tolist() == [False] * 3


@pytest.mark.parametrize("threshold", [decision.KEEP_ALL, 0.5, INF])
def test_a_nan_score_fails_closed(threshold: float) -> None:
    assert decision.escalates([math.nan, 0.9], threshold).tolist() == [True, threshold == INF]
    assert Router.decide(np.array([math.nan, 0.9]), threshold).tolist() == [True, threshold == INF]
    assert decision.escalates([math.nan], -INF).tolist() == [False]  # SLM-only serves whatever it got


def test_the_mode_says_who_pays_the_slm_attempt() -> None:
    d = decision.decide([0.1, 0.9, 0.9], 0.5, refused=[False, True, False])  # routed, kept refusal, kept
    assert d.slm_paid("cascade").tolist() == [True, True, True]
    assert d.slm_paid("pregen").tolist() == [False, True, True]
    assert d.wasted("cascade").tolist() == [True, True, False]
    assert d.wasted("pregen").tolist() == [False, True, False]
    # router 1, SLM 10, LLM 100: routed pays the LLM (and, cascading, the SLM first); a kept refusal pays both
    assert d.spend(1.0, 10.0, 100.0, "cascade").tolist() == [111.0, 111.0, 11.0]
    assert d.spend(1.0, 10.0, 100.0, "pregen").tolist() == [101.0, 111.0, 11.0]
    assert d.answer([1, 2, 3], [-1, -2, -3]).tolist() == [-1, -2, 3]
    with pytest.raises(ValueError, match="unknown mode"):
        decision.prices(1.0, 1.0, 1.0, "sometimes")


@pytest.mark.parametrize("mode", decision.MODES)
def test_the_sweep_sums_the_rule_at_every_threshold(mode: str) -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 40).astype(float)  # ties, and thresholds that land exactly on scores
    refused = rng.random(40) < 0.2
    router, slm, llm = rng.random(40), rng.random(40), 10 * rng.random(40)
    grid = np.array([-INF, decision.KEEP_ALL, 0.0, 1.0, 2.5, 4.0, 4.5, INF])

    def figures(d: decision.Decision) -> np.ndarray:
        return np.column_stack([d.escalated, d.spend(router, slm, llm, mode), d.wasted(mode)])

    expected = [figures(decision.decide(scores, t, refused)).sum(axis=0) for t in grid]
    np.testing.assert_allclose(decision.sweep(scores, grid, figures, refused), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="finite"):
        decision.sweep(np.append(scores, math.nan), grid, figures)


@pytest.mark.parametrize("mode", decision.MODES)
def test_metrics_outcomes_are_the_decision_priced(mode: str) -> None:
    table = records().assign(slm_refused=[False, True, False, True])
    for threshold in (-INF, 0.25, INF):
        out = metrics.outcomes(table, mode, threshold)
        d = decision.decide(table["score"], threshold, table["slm_refused"])
        assert out["escalated"].tolist() == d.escalated.tolist()
        np.testing.assert_allclose(out["cost"], d.spend(table["router_cost"], table["slm_cost"], table["llm_cost"], mode))
