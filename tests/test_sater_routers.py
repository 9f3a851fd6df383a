"""SATER's routers on hand-built samples: the refusal score and the confidence-weighted vote."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from escalate.routers.base import RouterInputs
from escalate.routers.registry import make_router
from escalate.sater.preferences import REFUSAL_COMPLETION
from escalate.sater.routers.vote import weighted_vote

LN = math.log


def sample(qid: str, idx: int, answer: str | None, correct: bool, token_lps: list[float],
           text: str | None = None) -> dict:
    return {"id": qid, "model": "slm", "split": "test", "sample_idx": idx, "parsed_answer": answer,
            "correct": correct, "token_logprobs": token_lps,
            "text": text if text is not None else f" The answer is {answer}."}


def inputs(rows: list[dict], ids: list[str]) -> RouterInputs:
    return RouterInputs(pd.DataFrame({"id": ids, "question": ids, "split": "test"}), pd.DataFrame(rows))


def test_weighted_vote_weighs_by_probability_and_counts_missing_answers_against() -> None:
    assert weighted_vote(["3", "4", "4"], [0.6, 0.1, 0.1]) == ("3", pytest.approx(0.75))
    assert weighted_vote(["3", None, "4"], [0.2, 0.6, 0.2]) == ("3", pytest.approx(0.2))  # first of a tie
    assert weighted_vote([None, None], [1.0, 1.0]) == (None, 0.0)


def test_a_confident_minority_outvotes_a_hesitant_majority() -> None:
    rows = [
        sample("q", 0, "7", True, [LN(0.9), LN(0.9)]),  # 0.81
        sample("q", 1, "8", False, [LN(0.3), LN(0.5)]),  # 0.15
        sample("q", 2, "8", False, [LN(0.5), LN(0.2)]),  # 0.10
    ]
    x = inputs(rows, ["q"])
    router = make_router("sater_vote")
    assert router.score(x)[0] == pytest.approx(0.81 / 1.06)
    assert router.slm_answers(x).to_dict("records") == [{"id": "q", "answer": "7", "correct": True, "refused": False}]
    # plain self-consistency, unweighted, picks the wrong majority
    assert make_router("self_consistency").slm_answers(x)["answer"].tolist() == ["8"]


def test_refusals_count_against_even_when_the_parser_finds_a_number() -> None:
    rows = [
        sample("q", 0, "4", True, [LN(0.5)]),
        sample("q", 1, "3", False, [LN(0.5)], text=REFUSAL_COMPLETION + " 3"),  # a refusal that rambles on
        sample("q", 2, None, False, [LN(0.5)], text=REFUSAL_COMPLETION),
    ]
    x = inputs(rows, ["q"])
    assert make_router("sater_vote").score(x)[0] == pytest.approx(1 / 3)
    every_refusal = inputs([sample("q", i, None, False, [LN(0.9)], text=REFUSAL_COMPLETION) for i in range(3)], ["q"])
    assert make_router("sater_vote").score(every_refusal)[0] == 0.0
    assert make_router("sater_vote").slm_answers(every_refusal).to_dict("records") == [
        {"id": "q", "answer": None, "correct": False, "refused": True}]
    # one answering sample is enough for the vote to answer, so the strategy has not refused
    assert make_router("sater_vote").slm_answers(x)["refused"].tolist() == [False]


def test_long_responses_do_not_underflow_the_weights() -> None:
    rows = [sample("q", 0, "1", True, [-400.0, -400.0]), sample("q", 1, "2", False, [-400.0, -401.0])]
    share = make_router("sater_vote").score(inputs(rows, ["q"]))[0]
    assert share == pytest.approx(1 / (1 + math.exp(-1)))


def test_refusals_score_zero_and_answers_their_prefix_probability() -> None:
    rows = [
        sample("refuses", 0, None, False, [LN(0.9), LN(0.5), LN(0.1)], text=REFUSAL_COMPLETION),
        sample("answers", 0, "5", True, [LN(0.9), LN(0.8), LN(0.5)]),
        sample("empty", 0, None, False, [], text=""),
        sample("answers", 1, "6", False, [LN(0.1)]),  # only the greedy sample is read
    ]
    x = inputs(rows, ["answers", "refuses", "empty"])
    router = make_router("sater_refusal", prefix_tokens=2)
    np.testing.assert_allclose(router.score(x), [0.9 * 0.8, 0.0, 0.0])
    assert list(router.escalate(x, 0.01)) == [False, True, True]  # a refusal escalates at any threshold
    assert list(router.escalate(x, 0.8)) == [True, True, True]
    assert router.slm_answers(x)["correct"].tolist() == [True, False, False]
    assert router.slm_answers(x)["refused"].tolist() == [False, True, False]  # an empty answer is no refusal


def test_refusal_router_needs_a_positive_prefix() -> None:
    with pytest.raises(ValueError, match="prefix_tokens"):
        make_router("sater_refusal", prefix_tokens=0)


def test_samples_without_text_hold_no_refusals() -> None:
    rows = [sample("q", 0, "5", True, [LN(0.5)]), sample("q", 1, "5", True, [LN(0.5)])]
    frame = pd.DataFrame(rows).drop(columns="text")
    x = RouterInputs(pd.DataFrame({"id": ["q"]}), frame)
    assert make_router("sater_vote").score(x)[0] == 1.0
    assert make_router("sater_refusal").score(x)[0] == pytest.approx(0.5)
