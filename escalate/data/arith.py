"""The built-in `arith` task: deterministic multi-step arithmetic word problems.

Difficulty is the number of operations (steps); operand size is a second knob. Every problem comes
with solutions in several styles (terse, step by step, padded), so sampled responses vary in length
and in how much reasoning they show: the raw material for SATER's shortest-correct preference.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NAMES = ("Ann", "Ben", "Cara", "Dan", "Eva", "Finn", "Gus", "Hana", "Ivy", "Jon", "Kim", "Leo", "Mia", "Ned")
ITEMS = ("apples", "coins", "books", "cards", "shells", "pens", "stamps", "marbles", "cups", "bricks")
STYLES = ("terse", "steps", "padded")


@dataclass(frozen=True)
class Step:
    op: str  # "+", "-", "*"
    operand: int
    before: int
    after: int


@dataclass(frozen=True)
class Problem:
    name: str
    item: str
    start: int
    steps: tuple[Step, ...]

    @property
    def answer(self) -> int:
        return self.steps[-1].after if self.steps else self.start

    @property
    def difficulty(self) -> int:
        return len(self.steps)

    def question(self) -> str:
        parts = [f"{self.name} has {self.start} {self.item}."]
        for s in self.steps:
            parts.append(_phrase(s))
        parts.append(f"How many {self.item} does {self.name} have now?")
        return " ".join(parts)

    def solution(self, style: str) -> str:
        """The worked solution in one style; every style ends with 'The answer is N.'"""
        final = f"The answer is {self.answer}."
        if style == "terse":
            return final
        if style == "steps":
            return " ".join(f"{s.before} {s.op} {s.operand} = {s.after}." for s in self.steps) + " " + final
        if style == "padded":
            lines = [f"{self.name} starts with {self.start} {self.item}."]
            for s in self.steps:
                lines.append(f"{_phrase(s)[:-1]}, so {s.before} {s.op} {s.operand} = {s.after}.")
            lines.append(f"So {self.name} has {self.answer} {self.item}.")
            return " ".join(lines) + " " + final
        raise ValueError(f"unknown solution style {style!r}; known: {', '.join(STYLES)}")


def _phrase(s: Step) -> str:
    if s.op == "+":
        return f"Then gets {s.operand} more."
    if s.op == "-":
        return f"Then gives away {s.operand}."
    return f"Then the pile grows {s.operand} times."


def make_problem(rng: random.Random, n_steps: int, max_operand: int) -> Problem:
    """One problem with `n_steps` operations; values stay non-negative.

    Multiplication is offered only while doubling stays within 10 * max_operand; additions are not
    capped, so long problems can end above it.
    """
    start = rng.randint(1, max_operand)
    value, steps = start, []
    cap = 10 * max_operand
    for _ in range(n_steps):
        choices = ["+", "-"] + (["*"] if value * 2 <= cap else [])
        op = rng.choice(choices)
        if op == "+":
            operand = rng.randint(1, max_operand)
        elif op == "-":
            if value < 1:
                op, operand = "+", rng.randint(1, max_operand)
            else:
                operand = rng.randint(1, min(value, max_operand))
        else:
            operand = rng.randint(2, max(2, min(3, cap // max(value, 1))))
        after = value + operand if op == "+" else value - operand if op == "-" else value * operand
        steps.append(Step(op, operand, value, after))
        value = after
    return Problem(rng.choice(NAMES), rng.choice(ITEMS), start, tuple(steps))


def generate(n: int, seed: int, min_steps: int, max_steps: int, max_operand: int) -> list[Problem]:
    """`n` problems with difficulty spread evenly over [min_steps, max_steps], deterministic from `seed`."""
    rng = random.Random(seed)
    levels = list(range(min_steps, max_steps + 1))
    return [make_problem(rng, levels[i % len(levels)], max_operand) for i in range(n)]
