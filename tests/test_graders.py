"""Graders extract the final answer the documented way and are the same functions the RL reward uses."""

from __future__ import annotations

import pytest

from escalate.data.graders import (
    EXTRACTORS,
    GRADERS,
    answer_span,
    extract_choice,
    extract_number,
    grade_choice,
    grade_numeric,
    grader_for,
    normalize_number,
    reward,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,234", "1234"),
        ("1,234.0", "1234"),
        ("$5", "5"),
        ("0.50", "0.5"),
        ("-3", "-3"),
        ("-$3", "-3"),
        (" 42. ", "42"),
        ("7.0", "7"),
        ("1e3", "1000"),
        ("abc", None),
        ("", None),
        ("nan", None),
        ("inf", None),
        (None, None),
    ],
)
def test_normalize_number(text: str | None, expected: str | None) -> None:
    assert normalize_number(text) == expected


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        # Documented precedence: 'answer is N', then '#### N', then the last number.
        ("The answer is 5. Then 7 more were added.", "5"),
        ("#### 3 ... so the answer is 4", "4"),
        ("Janet makes 9 * 2 = 18 dollars.\n#### 72\nCheck: 100", "72"),
        ("First 3, then 4, finally 12", "12"),
        ("The answer is 1 and later the answer is 2.", "2"),  # the last 'answer is' wins
        ("ANSWER IS: $1,234.", "1234"),
        ("She is left with -3 apples", "-3"),
        ("It weighs 0.50 kg.", "0.5"),
        ("No idea at all.", None),
        ("", None),
    ],
)
def test_extract_number_precedence(response: str, expected: str | None) -> None:
    assert extract_number(response) == expected


@pytest.mark.parametrize(
    ("response", "gold", "correct"),
    [
        ("The answer is 1,234.", "1234", True),
        ("The answer is 5.00", "$5", True),
        ("2 + 3 = 5. The answer is 6.", "5", False),  # the stated answer counts, not an earlier number
        ("#### 72", "72", True),
        ("I cannot say.", "3", False),
        ("The answer is 3.", "three", False),  # an unparseable gold never matches
    ],
)
def test_grade_numeric(response: str, gold: str, correct: bool) -> None:
    assert grade_numeric(response, gold) is correct


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("The answer is B.", "B"),
        ("The answer is (C)", "C"),
        ("Answer is D", "D"),  # the phrase in any case, as for numbers
        ("answer is: A because ...", "A"),
        ("B. Paris is the capital", "B"),
        ("(C) seven", "C"),
        ("A", "A"),
        ("Because of the wind", None),  # a capital at the start of a word is not an option letter
        ("the answer is a guess", None),  # lower-case letters are words, not options
        ("It depends", None),
    ],
)
def test_extract_choice(response: str, expected: str | None) -> None:
    assert extract_choice(response) == expected


def test_grade_choice_normalises_the_gold_letter() -> None:
    assert grade_choice("The answer is B.", " b ")
    assert not grade_choice("The answer is B.", "C")
    assert not grade_choice("Hmm.", "A")


@pytest.mark.parametrize(
    ("response", "kind", "expected"),
    [
        ("3 + 4 = 7. The answer is 7.", "numeric", "7"),
        ("Work: <<2*3=6>>6\n#### 6", "numeric", "6"),
        ("She has 12 then 15", "numeric", "15"),
        ("The answer is 1,234.", "numeric", "1,234"),
        ("Options weighed. The answer is (C).", "choice", "C"),
        ("B. because", "choice", "B"),
    ],
)
def test_answer_span_covers_the_final_answer(response: str, kind: str, expected: str) -> None:
    span = answer_span(response, kind)
    assert span is not None
    start, end = span
    assert response[start:end] == expected
    # the *final* answer: nothing after the span spells the same answer again
    assert expected not in response[end:]


def test_answer_span_picks_the_last_of_equal_answers() -> None:
    response = "7 is tempting, but 3 + 4 = 7. The answer is 7."
    assert answer_span(response) == (len(response) - 2, len(response) - 1)


def test_answer_span_none_without_an_answer() -> None:
    assert answer_span("no digits here") is None
    assert answer_span("maybe", "choice") is None


def test_reward_scores_a_correct_and_incorrect_pair() -> None:
    correctness = reward("numeric")
    assert correctness(["The answer is 5.", "The answer is 6."], answer=["5", "5"]) == [1.0, 0.0]
    assert correctness.__name__ == "correctness_numeric"


def test_reward_accepts_chat_format_completions() -> None:
    completions = [
        [{"role": "assistant", "content": "2 + 3 = 5. The answer is 5."}],
        [{"role": "assistant", "content": "The answer is 4."}],
    ]
    assert reward()(completions, answer=["5", "5"], prompts=["ignored"]) == [1.0, 0.0]


def test_reward_is_the_evaluation_grader() -> None:
    texts = ["The answer is B.", "A. no", "The answer is 5", "nothing"]
    golds = ["B", "B", "5", "5"]
    for kind in GRADERS:
        expected = [1.0 if GRADERS[kind](t, g) else 0.0 for t, g in zip(texts, golds)]
        assert reward(kind)(texts, answer=golds) == expected
    assert reward("choice")(texts[:2], answer=golds[:2]) == [1.0, 0.0]


def test_grader_registries() -> None:
    assert grader_for("numeric") is grade_numeric and grader_for("choice") is grade_choice
    assert EXTRACTORS["numeric"] is extract_number and EXTRACTORS["choice"] is extract_choice
    with pytest.raises(KeyError, match="unknown grader 'regex'; known: numeric, choice"):
        grader_for("regex")
