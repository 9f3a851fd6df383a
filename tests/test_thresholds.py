"""Threshold policies on outcomes whose right pick is known, and the risk guarantee over many splits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from escalate.evaluation import curves, thresholds
from escalate.evaluation.thresholds import Outcomes
from tests.records_factory import records


def unit_outcomes(scores: np.ndarray, slm: np.ndarray, llm: np.ndarray, ratio: float = 20.0) -> Outcomes:
    """Pre-generation outcomes with unit costs: the LLM costs 1 a query, the SLM 1/ratio."""
    n = len(scores)
    return Outcomes(np.asarray(scores, float), np.asarray(slm, bool), np.asarray(llm, bool),
                    keep_cost=np.full(n, 1 / ratio), escalate_cost=np.ones(n), llm_cost=np.ones(n),
                    refused=np.zeros(n, bool))


def ranked(n: int = 100) -> Outcomes:
    """Scores 0..n-1; the SLM is wrong on the lowest 30, the LLM is right everywhere but on query 50."""
    scores = np.arange(n, dtype=float)
    return unit_outcomes(scores, scores >= 30, scores != 50)


@pytest.mark.parametrize("refused", [None, [False, True, True, False]])
@pytest.mark.parametrize("mode", ["cascade", "pregen"])
def test_curve_matches_the_sweep(mode: str, refused: list[bool] | None) -> None:
    table = records() if refused is None else records().assign(slm_refused=refused)
    sweep = curves.sweep(table, mode)
    got = Outcomes.from_records(table, mode).curve(sweep["threshold"].to_numpy())
    for column in ("call_rate", "cost", "accuracy"):
        np.testing.assert_allclose(got[column], sweep[column], rtol=1e-12, err_msg=column)


def test_a_refusing_strategy_reaches_call_rate_zero_only_at_minus_infinity() -> None:
    out = Outcomes.from_records(records().assign(slm_refused=[False, True, True, False]), "pregen")
    grid = out.grid()
    assert grid[0] == -np.inf and np.isfinite(grid[1])
    curve = out.curve(grid)
    assert curve["call_rate"][0] == 0.0 and curve["call_rate"][1] == 0.5  # b and c refuse: the LLM answers
    assert curve["accuracy"][0] == 0.5 and curve["accuracy"][1] == 0.5  # c: right either way; b: wrong either way
    assert thresholds.by_budget(out, 0.25).threshold == -np.inf  # below the refusals' share: serve them
    assert thresholds.realized(out, -np.inf)["call_rate"] == 0.0
    assert Outcomes.from_records(records(), "pregen").grid()[0] > -np.inf  # no refusals: no −inf point


def test_keeping_a_refusal_loses_no_answer() -> None:
    # a and b: the SLM is wrong, the LLM right; b refuses, so keeping b still gets the LLM's answer
    out = Outcomes.from_records(records().assign(llm_correct=True, slm_refused=[False, True, False, False]), "pregen")
    assert thresholds.lost_answers(out).tolist() == [True, False, False, False]


def test_quantile_grid_has_both_ends_and_rejects_too_few_points() -> None:
    grid = thresholds.quantile_grid([3.0, 1.0, 2.0], 5)
    assert grid[0] == 1.0 and grid[-2] == 3.0 and grid[-1] == math.inf and len(grid) == 6
    with pytest.raises(ValueError, match="n_points"):
        thresholds.quantile_grid([1.0], 1)


def test_by_budget_takes_the_largest_call_rate_within_it() -> None:
    for budget in (0.0, 0.1, 0.3, 0.55, 1.0):
        pick = thresholds.by_budget(ranked(), budget)
        assert pick.policy == "budget"
        assert pick.call_rate <= budget + 1e-12
        assert pick.call_rate > budget - 0.02  # the 101-point grid has a point every 1% here
    # it reads no labels: flipping every correctness leaves the pick unchanged
    out = ranked()
    flipped = Outcomes(out.scores, ~out.slm_correct, ~out.llm_correct, out.keep_cost, out.escalate_cost,
                       out.llm_cost, out.refused)
    assert thresholds.by_budget(flipped, 0.3).threshold == thresholds.by_budget(out, 0.3).threshold


def test_by_accuracy_is_the_objectives_operating_point() -> None:
    # records(): the cheapest cascade point within 0.02 of LLM-only escalates a (call rate 0.25, cost 0.34)
    pick = thresholds.by_accuracy(Outcomes.from_records(records(), "cascade"), 0.02)
    assert (pick.call_rate, pick.cost, pick.accuracy) == pytest.approx((0.25, 0.34, 0.75))
    assert 0.1 < pick.threshold <= 0.2
    # ranked(): LLM-only accuracy is 0.99; keeping query 50 (SLM right, LLM wrong) makes up for one
    # SLM mistake kept, so escalating 29 of the 30 mistakes matches it
    pick = thresholds.by_accuracy(ranked(), 0.0)
    assert pick.call_rate == pytest.approx(0.29) and pick.accuracy == pytest.approx(0.99)
    # a looser δ buys a cheaper point: 0.97 needs two mistakes fewer fixed
    assert thresholds.by_accuracy(ranked(), 0.02).call_rate == pytest.approx(0.27)


def test_by_accuracy_falls_back_to_llm_only_when_nothing_cheaper_qualifies() -> None:
    scores = np.arange(10.0)
    out = unit_outcomes(scores, scores % 2 == 1, np.ones(10, bool))  # the score says nothing useful
    pick = thresholds.by_accuracy(out, 0.0)
    assert pick.call_rate == pytest.approx(0.9) and pick.accuracy == 1.0  # escalate all but the top (right) one


def test_cost_optimal_trades_cost_against_errors() -> None:
    out = ranked()
    assert thresholds.cost_optimal(out, 0.0).call_rate == 0.0  # errors are free: the SLM answers everything
    # one mistake costs 2 LLM calls: each of the 30 mistakes is worth escalating (gain 2 > cost 0.95)
    assert thresholds.cost_optimal(out, 2.0).call_rate == pytest.approx(0.30)
    # one mistake costs 0.5 LLM calls: none is worth escalating
    assert thresholds.cost_optimal(out, 0.5).call_rate == 0.0


def test_risk_controlled_with_a_perfect_ranking_keeps_exactly_what_is_safe() -> None:
    scores = np.arange(1000.0)
    out = unit_outcomes(scores, scores >= 300, np.ones(1000, bool))
    pick = thresholds.risk_controlled(out, epsilon=0.05, alpha=0.1)
    lost = int(round((1 - pick.accuracy) * 1000))
    # the largest loss count whose binomial p-value stays <= 0.1 at n = 1000, ε = 0.05 is 40
    assert lost == 40 and pick.call_rate == pytest.approx(0.26)
    assert thresholds.risk_controlled(out, epsilon=0.02, alpha=0.1).call_rate > pick.call_rate
    assert thresholds.risk_controlled(out, epsilon=0.05, alpha=0.01).call_rate > pick.call_rate


def test_risk_controlled_escalates_everything_when_calib_is_too_small() -> None:
    out = ranked(20)  # (1 − 0.05)^20 = 0.36 > α: not even keeping zero-loss queries can be certified
    pick = thresholds.risk_controlled(out, epsilon=0.05, alpha=0.1)
    assert pick.threshold == math.inf and pick.call_rate == 1.0


def population(n: int, seed: int) -> Outcomes:
    """The SLM is right with probability 0.2 + 0.75·score, the LLM with 0.9, independently."""
    rng = np.random.default_rng(seed)
    scores = rng.random(n)
    return unit_outcomes(scores, rng.random(n) < 0.2 + 0.75 * scores, rng.random(n) < 0.9)


def split_losses(pool: Outcomes, n_calib: int, trials: int, rule: str, seed: int) -> dict[str, np.ndarray]:
    """Test-part figures of `trials` random calib/test splits of the pool, the threshold fitted on calib by `rule`.

    risk: share of test queries whose kept SLM answer is wrong where the LLM is right (what the
    policy controls); accuracy_loss: LLM-only accuracy minus the cascade's (what a user is promised,
    never above risk); call_rate.
    """
    rng = np.random.default_rng(seed)
    lost = thresholds.lost_answers(pool).astype(int)
    net = lost - (pool.slm_correct & ~pool.llm_correct)
    order = np.argsort(pool.scores)
    sorted_scores = pool.scores[order]

    def suffix(values: np.ndarray) -> np.ndarray:  # Σ over {score >= t}, indexed by searchsorted
        return np.append(np.cumsum(values[order][::-1])[::-1], 0)

    kept_lost, kept_net, kept_n = suffix(lost), suffix(net), suffix(np.ones_like(lost))
    n_test = len(pool.scores) - n_calib
    figures = {"risk": np.empty(trials), "accuracy_loss": np.empty(trials), "call_rate": np.empty(trials)}
    for k in range(trials):
        calib = rng.choice(len(pool.scores), n_calib, replace=False)
        part = pool.take(calib)
        if rule == "ltt":
            t = thresholds.risk_controlled(part, 0.05, 0.1).threshold
        else:  # plug-in: the cheapest point with calib accuracy loss <= ε, no confidence margin
            t = thresholds.by_accuracy(part, 0.05, n_points=n_calib).threshold
        at = np.searchsorted(sorted_scores, t, side="left")
        kept = part.scores >= t
        figures["risk"][k] = (kept_lost[at] - lost[calib][kept].sum()) / n_test
        figures["accuracy_loss"][k] = (kept_net[at] - net[calib][kept].sum()) / n_test
        figures["call_rate"][k] = 1 - (kept_n[at] - kept.sum()) / n_test
    return figures


def test_risk_guarantee_holds_over_many_random_splits() -> None:
    """P(test loss > ε) <= α up to Monte Carlo error, over 1000 random calib/test splits of one pool.

    The plug-in rule breaks it about half the time, so the check has teeth; the controlled risk
    comes close to α (the binomial test is nearly exact), so the policy is not vacuous either.
    """
    pool = population(100_000, seed=0)
    ltt = split_losses(pool, n_calib=500, trials=1000, rule="ltt", seed=1)
    plug_in = split_losses(pool, n_calib=500, trials=200, rule="plug_in", seed=2)
    slack = 3 * math.sqrt(0.1 * 0.9 / 1000)
    assert np.mean(ltt["risk"] > 0.05) <= 0.1 + slack
    assert np.mean(ltt["accuracy_loss"] > 0.05) <= np.mean(ltt["risk"] > 0.05)
    assert np.mean(ltt["risk"] > 0.05) > 0.01
    assert np.mean(plug_in["accuracy_loss"] > 0.05) > 0.3
    assert ltt["call_rate"].mean() < 0.8  # it keeps a fair share with the SLM


def test_bad_arguments_fail_loudly() -> None:
    out = ranked()
    with pytest.raises(ValueError, match="budget"):
        thresholds.by_budget(out, 1.5)
    with pytest.raises(ValueError, match="delta"):
        thresholds.by_accuracy(out, -0.1)
    with pytest.raises(ValueError, match="error_cost"):
        thresholds.cost_optimal(out, -1.0)
    with pytest.raises(ValueError, match="epsilon"):
        thresholds.risk_controlled(out, 0.0, 0.1)
    with pytest.raises(ValueError, match="alpha"):
        thresholds.risk_controlled(out, 0.1, 1.0)
    with pytest.raises(ValueError, match="one length"):
        Outcomes(np.zeros(2), np.zeros(3, bool), np.zeros(2, bool), np.zeros(2), np.zeros(2), np.ones(2),
                 np.zeros(2, bool))
    with pytest.raises(ValueError, match="finite"):
        unit_outcomes(np.array([0.0, np.nan]), np.zeros(2, bool), np.zeros(2, bool))


def test_realized_reports_what_a_threshold_does_on_another_split() -> None:
    got = thresholds.realized(ranked(), 30.0)
    # escalating all 30 SLM mistakes and keeping query 50, which only the SLM gets right, beats LLM-only
    assert got == pytest.approx({"call_rate": 0.30, "cost": 0.30 + 0.70 / 20, "accuracy": 1.0, "accuracy_loss": -0.01})


def test_balanced_mixture_takes_equally_from_every_group() -> None:
    big, small = ranked(100), ranked(20)
    mixed = thresholds.balanced_mixture([big, small], seed=0)
    assert len(mixed.scores) == 40
    assert np.sum(mixed.scores < 20) >= 20  # all of `small` (scores 0..19) plus any low draws from `big`
    assert thresholds.balanced_mixture([big, small], seed=0).scores.tolist() == mixed.scores.tolist()
