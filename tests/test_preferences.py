"""SATER's tables from hand-built samples: preference pairs (stage I) and refusal targets (stage II)."""

from __future__ import annotations

import pandas as pd
import pytest

from escalate.data.schema import REFUSAL, is_refusal
from escalate.data.validation import validate
from escalate.prompts import format_prompt
from escalate.sater.preferences import REFUSAL_COMPLETION, build_preferences, refusal_targets

QUESTIONS = pd.DataFrame({
    "id": ["q1", "q2", "q3", "q4"],
    "question": ["Ann has 3 cups.", "Bo has 4 pens.", "Cy has 5 hats.", "Which is even?"],
    "choices": [None, None, None, '["3", "4"]'],
})


def s(qid: str, idx: int, text: str, correct: bool, n_tokens: int) -> dict:
    return {"id": qid, "model": "slm", "sample_idx": idx, "text": text, "correct": correct,
            "n_output_tokens": n_tokens}


@pytest.fixture()
def samples() -> pd.DataFrame:
    """q1: a long and a short correct answer, a wrong one twice; q2: nothing correct; q3: one sample;
    q4 (multiple choice): two correct answers of the same length, one wrong."""
    return pd.DataFrame([
        s("q1", 0, " 3 + 0 = 3. The answer is 3.", True, 12),
        s("q1", 1, " The answer is 4.", False, 6),
        s("q1", 2, " The answer is 3.", True, 6),
        s("q1", 3, " The answer is 4.", False, 6),
        s("q2", 0, " The answer is 1.", False, 6),
        s("q2", 1, " The answer is 2.", False, 6),
        s("q3", 0, " The answer is 5.", True, 6),
        s("q4", 2, " The answer is B.", True, 6),
        s("q4", 1, " B", True, 6),
        s("q4", 0, " A", False, 2),
    ])


def test_chosen_is_the_shortest_correct_against_longer_correct_and_wrong(samples: pd.DataFrame) -> None:
    prefs = build_preferences(samples, QUESTIONS)
    q1 = prefs[prefs["id"] == "q1"]
    assert set(q1["chosen"]) == {" The answer is 3."}  # 6 tokens beats the correct 12-token one
    # the repeated wrong answer gives one pair
    assert sorted(zip(q1["rejected"], q1["rejected_correct"])) == [
        (" 3 + 0 = 3. The answer is 3.", True), (" The answer is 4.", False)]
    assert q1["chosen_correct"].all()
    assert set(q1["prompt"]) == {format_prompt("Ann has 3 cups.")}


def test_no_correct_sample_and_a_single_sample_give_no_pair(samples: pd.DataFrame) -> None:
    assert not {"q2", "q3"} & set(build_preferences(samples, QUESTIONS)["id"])


def test_length_ties_go_to_the_lowest_sample_idx_and_an_equal_correct_is_not_rejected(samples: pd.DataFrame) -> None:
    q4 = build_preferences(samples, QUESTIONS).query("id == 'q4'")
    assert list(q4["chosen"]) == [" B"]  # sample 1 beats sample 2 at equal length, listing order aside
    assert list(q4["rejected"]) == [" A"]  # shorter, but wrong; " The answer is B." is not rejected
    assert set(q4["prompt"]) == {format_prompt("Which is even?", ["3", "4"])}


def test_chosen_never_equals_rejected() -> None:
    same = pd.DataFrame([s("q1", 0, " The answer is 3.", True, 6), s("q1", 1, " The answer is 3.", True, 9),
                         s("q1", 2, " ", False, 1)])  # blank: nothing to learn from, and the table forbids it
    assert build_preferences(same, QUESTIONS).empty


def test_samples_of_two_models_are_refused(samples: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="one model"):
        build_preferences(samples.assign(model=["slm"] * 9 + ["llm"]), QUESTIONS)


@pytest.mark.parametrize(("tau", "refused"), [(0.5, {"q2"}), (0.51, {"q1", "q2"}), (1.0, {"q1", "q2", "q4"}),
                                              (0.01, {"q2"})])
def test_refusal_targets_refuse_below_tau(samples: pd.DataFrame, tau: float, refused: set[str]) -> None:
    table = refusal_targets(samples, QUESTIONS, tau).set_index("id")
    assert table.loc[["q1", "q2", "q3", "q4"], "p_correct"].tolist() == [0.5, 0.0, 1.0, pytest.approx(2 / 3)]
    assert set(table.index[table["completion"] == REFUSAL_COMPLETION]) == refused
    answered = table[table["completion"] != REFUSAL_COMPLETION]["completion"].to_dict()
    expected = {"q1": " The answer is 3.", "q3": " The answer is 5.", "q4": " B"}
    assert answered == {k: v for k, v in expected.items() if k not in refused}


@pytest.mark.parametrize("tau", [0.0, -0.1, 1.5])
def test_tau_outside_its_range_is_rejected(samples: pd.DataFrame, tau: float) -> None:
    with pytest.raises(ValueError, match="tau"):
        refusal_targets(samples, QUESTIONS, tau)


def test_both_tables_pass_their_validation_suites(samples: pd.DataFrame) -> None:
    assert validate(build_preferences(samples, QUESTIONS), "preferences").ok
    assert validate(refusal_targets(samples, QUESTIONS, 0.5), "refusal_sft").ok


@pytest.mark.parametrize(("text", "expected"), [
    (REFUSAL, True), (REFUSAL_COMPLETION, True), ("  i DON'T   know;\nescalating", True),
    ("I don’t know; escalating.", True), (REFUSAL + " The answer is 3.", True),
    ("The answer is 3.", False), ("I don't know", False), ("", False), (None, False),
])
def test_refusal_parsing_tolerates_case_and_spacing(text: str | None, expected: bool) -> None:
    assert is_refusal(text) is expected
