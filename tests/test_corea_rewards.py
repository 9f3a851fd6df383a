"""COREA's reward functions on hand-made completions whose right reward is known."""

from __future__ import annotations

import pytest

from escalate.corea.rewards import calibration, correctness, format_ok, reward_functions
from escalate.data.graders import reward

# gold answer 7 for all; numeric grading
CORRECT_CONFIDENT = " 3 + 4 = 7. The answer is 7. Confidence: 0.90"
WRONG_CONFIDENT = " 3 + 4 = 8. The answer is 8. Confidence: 0.90"
CORRECT_UNSURE = " The answer is 7. Confidence: 0.20"
WRONG_UNSURE = " The answer is 8. Confidence: 0.10"
MALFORMED_RIGHT = " The answer is 7. Confidence: very"
MISSING_WRONG = " The answer is 8."
COMPLETIONS = [CORRECT_CONFIDENT, WRONG_CONFIDENT, CORRECT_UNSURE, WRONG_UNSURE, MALFORMED_RIGHT, MISSING_WRONG]
KWARGS = {"answer": ["7"] * len(COMPLETIONS), "kind": ["numeric"] * len(COMPLETIONS)}


def test_correctness_is_the_evaluation_grader() -> None:
    assert correctness(COMPLETIONS, **KWARGS) == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    # the same verdicts as the grader's own TRL reward, which evaluation's sampling uses
    assert correctness(COMPLETIONS, **KWARGS) == reward("numeric")(COMPLETIONS, answer=KWARGS["answer"])


def test_correctness_grades_each_row_by_its_kind() -> None:
    texts = [" The answer is B. Confidence: 0.5", " The answer is 4. Confidence: 0.5"]
    assert correctness(texts, answer=["B", "4"], kind=["choice", "numeric"]) == [1.0, 1.0]


def test_format_rewards_one_readable_confidence_at_the_end() -> None:
    assert format_ok(COMPLETIONS, **KWARGS) == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_calibration_is_one_minus_the_brier_term() -> None:
    got = calibration(COMPLETIONS, **KWARGS)
    expected = [1 - 0.1**2, 1 - 0.9**2, 1 - 0.8**2, 1 - 0.1**2, 0.0, 0.0]
    assert got == pytest.approx(expected)
    # wrong and confident earns the least of any readable confidence; unreadable earns nothing at all
    assert got[1] == min(got[:4])


def test_calibration_is_proper_the_expected_reward_peaks_at_the_true_probability() -> None:
    p = 0.7  # the chance of being right

    def expected(c: float) -> float:
        text = f" The answer is 7. Confidence: {c:.2f}"
        right, wrong = calibration([text], answer=["7"], kind=["numeric"]), calibration([text], answer=["8"],
                                                                                         kind=["numeric"])
        return p * right[0] + (1 - p) * wrong[0]

    best = max((c / 100 for c in range(101)), key=expected)
    assert best == pytest.approx(p)


def test_conversational_completions_are_read_from_the_last_message() -> None:
    chat = [[{"role": "assistant", "content": CORRECT_CONFIDENT}]]
    assert calibration(chat, answer=["7"], kind=["numeric"]) == pytest.approx([0.99])


def test_rlvr_drops_only_the_calibration_reward() -> None:
    assert reward_functions(calibrated=True) == [correctness, format_ok, calibration]
    assert reward_functions(calibrated=False) == [correctness, format_ok]
