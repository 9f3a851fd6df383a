"""The built-in `arith` generator: deterministic, difficulty = steps, arithmetic that checks out, and
solutions in every style that the numeric grader accepts against the problem's answer."""

from __future__ import annotations

import random
import re

import pytest

from escalate.data import arith
from escalate.data.graders import extract_number, grade_numeric

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@pytest.fixture(scope="module")
def problems() -> list[arith.Problem]:
    return arith.generate(600, seed=7, min_steps=1, max_steps=6, max_operand=12)


def test_same_seed_same_problems_other_seed_other_problems() -> None:
    a = arith.generate(50, seed=3, min_steps=1, max_steps=4, max_operand=9)
    b = arith.generate(50, seed=3, min_steps=1, max_steps=4, max_operand=9)
    c = arith.generate(50, seed=4, min_steps=1, max_steps=4, max_operand=9)
    assert a == b
    assert [p.question() for p in a] == [p.question() for p in b]
    assert [p.question() for p in a] != [p.question() for p in c]


def test_generation_ignores_global_random_state() -> None:
    random.seed(1)
    a = arith.generate(20, seed=5, min_steps=1, max_steps=3, max_operand=9)
    random.seed(2)
    b = arith.generate(20, seed=5, min_steps=1, max_steps=3, max_operand=9)
    assert a == b


def test_difficulty_is_number_of_steps_spread_evenly(problems: list[arith.Problem]) -> None:
    for i, p in enumerate(problems):
        assert p.difficulty == len(p.steps)
        assert p.difficulty == 1 + i % 6  # levels cycle through [min_steps, max_steps]
    counts = {d: sum(p.difficulty == d for p in problems) for d in range(1, 7)}
    assert set(counts.values()) == {100}


def test_each_step_is_correct_arithmetic_chained_from_the_start(problems: list[arith.Problem]) -> None:
    for p in problems:
        value = p.start
        assert 1 <= p.start <= 12
        for s in p.steps:
            assert s.before == value
            assert s.after == OPS[s.op](s.before, s.operand)
            value = s.after
        assert p.answer == value


def test_values_never_negative(problems: list[arith.Problem]) -> None:
    # Many long problems with small operands: subtraction gets every chance to go below zero.
    many = problems + arith.generate(2000, seed=11, min_steps=8, max_steps=12, max_operand=3)
    for p in many:
        assert p.start >= 1
        for s in p.steps:
            assert s.before >= 0 and s.after >= 0 and s.operand >= 1
        assert p.answer >= 0


def test_multiplication_only_while_the_doubled_value_stays_under_the_cap(problems: list[arith.Problem]) -> None:
    for p in problems:
        for s in p.steps:
            if s.op == "*":
                assert s.operand in (2, 3)
                assert s.before * 2 <= 10 * 12


def test_question_states_start_every_operand_and_asks(problems: list[arith.Problem]) -> None:
    p = problems[5]
    q = p.question()
    assert q.startswith(f"{p.name} has {p.start} {p.item}.")
    assert q.endswith(f"How many {p.item} does {p.name} have now?")
    numbers = [int(n) for n in re.findall(r"\d+", q)]
    assert numbers == [p.start, *(s.operand for s in p.steps)]


@pytest.mark.parametrize("style", arith.STYLES)
def test_every_style_ends_with_the_answer_and_grades_correct(problems: list[arith.Problem], style: str) -> None:
    for p in problems:
        solution = p.solution(style)
        assert solution.endswith(f"The answer is {p.answer}.")
        assert grade_numeric(solution, str(p.answer))
        assert not grade_numeric(solution, str(p.answer + 1))
        assert extract_number(solution) == str(p.answer)


def test_steps_style_shows_each_operation(problems: list[arith.Problem]) -> None:
    p = next(p for p in problems if p.difficulty == 3)
    text = p.solution("steps")
    for s in p.steps:
        assert f"{s.before} {s.op} {s.operand} = {s.after}." in text


def test_terse_shorter_than_steps_shorter_than_padded(problems: list[arith.Problem]) -> None:
    for p in problems:
        terse, steps, padded = (len(p.solution(s)) for s in ("terse", "steps", "padded"))
        assert terse < steps < padded


def test_unknown_style_is_rejected(problems: list[arith.Problem]) -> None:
    with pytest.raises(ValueError, match="unknown solution style 'haiku'; known: terse, steps, padded"):
        problems[0].solution("haiku")


def test_operand_size_knob_bounds_operands() -> None:
    for p in arith.generate(300, seed=2, min_steps=1, max_steps=4, max_operand=5):
        assert 1 <= p.start <= 5
        assert all(s.operand <= 5 for s in p.steps)
