"""SATER's report figures: stage I's claim rule, refusal counts, the routing table and issue 4's targets."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from escalate.sater import report
from escalate.sater.preferences import REFUSAL_COMPLETION


def greedy(texts: list[str], correct: list[bool], tokens: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"q{i}" for i in range(len(texts))], "text": texts, "correct": correct,
                         "n_output_tokens": tokens})


def test_stage_one_claims_a_reduction_only_within_one_point_of_accuracy() -> None:
    before = greedy(["a"] * 100, [True] * 50 + [False] * 50, [40] * 100)
    kept = report.stage_one(before, greedy(["b"] * 100, [True] * 49 + [False] * 51, [20] * 100))
    assert kept["token_reduction"] == pytest.approx(0.5) and kept["token_reduction_claimed"]
    lost = report.stage_one(before, greedy(["b"] * 100, [True] * 48 + [False] * 52, [20] * 100))
    assert not lost["token_reduction_claimed"]


def test_refusals_count_as_wrong_and_are_left_out_of_answered_figures() -> None:
    stage2 = greedy([REFUSAL_COMPLETION, " i DON'T know; escalating", "7", "8"], [False, False, True, False],
                    [9, 9, 3, 5])
    figures = report.refusals(stage2)
    assert figures == {"refusal_rate": 0.5, "accuracy_when_answering": 0.5, "slm_accuracy": 0.25,
                       "answered_tokens": 4.0}


def test_refusals_of_a_model_that_always_refuses_are_undefined_when_answering() -> None:
    figures = report.refusals(greedy([REFUSAL_COMPLETION], [False], [9]))
    assert figures["refusal_rate"] == 1.0 and math.isnan(figures["accuracy_when_answering"])


def summary_row(strategy: str, **figures: float | None) -> dict:
    base = {"strategy": strategy, "mode": "cascade", "accuracy": 0.8, "cost": 0.5, "call_rate": 0.4, "agl_s": 1.0,
            "agl_model_s": 1.0, "arol_s": 0.5, "arol_model_s": 0.5, "toa": 0.6, "togr": 0.1,
            "saving_at_iso_accuracy": 0.1, "auroc": 0.7}
    return {**base, **figures}


def evaluations() -> dict[str, dict]:
    vanilla = {"summary": [summary_row("p_true_token", agl_model_s=2.0, arol_model_s=1.0),
                           summary_row("self_consistency"), summary_row("SLM-only")]}
    sater = {"summary": [summary_row("sater_refusal", agl_model_s=0.8, arol_model_s=0.1, saving_at_iso_accuracy=0.3),
                         summary_row("sater_pregen", saving_at_iso_accuracy=0.55),
                         summary_row("sater_vote", saving_at_iso_accuracy=None)]}
    return {"vanilla": vanilla, "sater": sater}


def test_the_routing_table_holds_vanilla_and_sater_strategies_with_their_tokens() -> None:
    tokens = dict.fromkeys((*report.VANILLA, *report.STRATEGIES), 12.0)
    rows = report.routing_rows(evaluations(), tokens)
    assert [(r["slm"], r["strategy"]) for r in rows] == [
        ("vanilla", "p_true_token"), ("vanilla", "self_consistency"),
        ("sater", "sater_refusal"), ("sater", "sater_pregen"), ("sater", "sater_vote")]
    assert all(r["slm_output_tokens"] == 12.0 for r in rows)


def test_targets_compare_the_refusal_cascade_with_the_vanilla_p_true_cascade() -> None:
    rows = report.routing_rows(evaluations(), dict.fromkeys((*report.VANILLA, *report.STRATEGIES), 1.0))
    stage1 = {"token_reduction": 0.45, "token_reduction_claimed": True, "accuracy_before": 0.5,
              "accuracy_after": 0.495}
    targets = report.check_targets(stage1, rows)
    assert targets["arol_cut"]["value"] == pytest.approx(0.9) and targets["arol_cut"]["met"]
    assert targets["agl_cut"]["value"] == pytest.approx(0.6) and targets["agl_cut"]["met"]
    assert targets["saving"]["value"] == pytest.approx(0.55) and targets["saving"]["met"]  # the best, NaN skipped
    assert targets["token_reduction"]["met"] and targets["accuracy_drop"]["met"]


def test_an_unclaimed_reduction_and_a_missing_operating_point_meet_nothing() -> None:
    rows = report.routing_rows(evaluations(), dict.fromkeys((*report.VANILLA, *report.STRATEGIES), 1.0))
    rows[0]["arol_model_s"] = None  # the vanilla cascade never reaches accuracy >= LLM-only - delta
    stage1 = {"token_reduction": 0.6, "token_reduction_claimed": False, "accuracy_before": 0.5, "accuracy_after": 0.3}
    targets = report.check_targets(stage1, rows)
    assert not targets["token_reduction"]["met"] and math.isnan(targets["token_reduction"]["value"])
    assert not targets["arol_cut"]["met"] and not targets["accuracy_drop"]["met"]


def test_latency_cuts_cover_every_sater_strategy_measured_and_modeled() -> None:
    rows = report.routing_rows(evaluations(), dict.fromkeys((*report.VANILLA, *report.STRATEGIES), 1.0))
    cuts = {r["strategy"]: r for r in report.latency_cuts(rows)}
    assert set(cuts) == set(report.STRATEGIES)
    assert cuts["sater_refusal"]["arol_cut_model_s"] == pytest.approx(0.9)
    assert cuts["sater_refusal"]["agl_cut_s"] == pytest.approx(0.0)  # same measured AGL as the baseline
