"""Shifted `arith` datasets: the same task, moved in one way the zoo was not tuned on.

Each shift wraps the built-in generator (escalate/data/arith.py) without changing it: it calls it with
other settings (larger operands, longer chains) or rewrites its problems' text (new names and phrasings,
distractor sentences), so the answer is still the generator's. `base` is the profile's own distribution,
one part of the constructed calibration set and never a transfer target.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from escalate.config import ArithConfig, ConfigError
from escalate.data import arith

# Names and items the generator never uses, so the `names` and `phrasing` shifts meets tokens (or token splits) the zoo
# saw rarely or never.
NEW_NAMES = ("Olga", "Pablo", "Quinn", "Rosa", "Sami", "Tariq", "Uma", "Vera", "Wes", "Xena", "Yuri", "Zoe")
NEW_ITEMS = ("pebbles", "tickets", "buttons", "keys", "ribbons", "spoons", "jars", "candles")
# One irrelevant sentence per template: who else has what, or nothing about counts at all.
DISTRACTORS = ("{other} has {k} {other_item}.", "The weather is {weather} today.",
               "{other} once owned {k} {other_item}.", "The shop opens at {k} o'clock.")
WEATHER = ("sunny", "rainy", "windy", "cold")


@dataclass(frozen=True)
class ShiftConfig:
    """How far the shifts move from the profile's generator; `escalate calibrate` flags override each.

    Measured on tiny's shipped zoo (greedy, 60-80 questions): operands up to 2x max_operand leave its LLM
    at ~0.22 accuracy, 1.5x at ~0.59 (SLM ~0.44), so 1.5x keeps a gap a cascade can close.
    """

    operand_factor: float = 1.5  # operands up to round(factor * max_operand)
    extra_steps: int = 2  # chains of max_steps + 1 .. max_steps + extra_steps operations
    max_distractors: int = 2  # 1 .. this many irrelevant sentences per question

    def __post_init__(self) -> None:
        if not self.operand_factor > 1:
            raise ConfigError(f"--operand-factor must be > 1 to shift the operands, got {self.operand_factor}")
        if self.extra_steps < 1:
            raise ConfigError(f"--extra-steps must be >= 1 to lengthen the chains, got {self.extra_steps}")
        if self.max_distractors < 1:
            raise ConfigError(f"--max-distractors must be >= 1, got {self.max_distractors}")

    def max_operand(self, cfg: ArithConfig) -> int:
        return max(cfg.max_operand + 1, round(self.operand_factor * cfg.max_operand))


@dataclass(frozen=True)
class Item:
    """One shifted question: its text, the generator's answer and difficulty, and what was shifted."""

    question: str
    answer: int
    difficulty: int
    solutions: dict[str, str]


def _base_problems(n: int, seed: int, cfg: ArithConfig, **settings: int) -> list[arith.Problem]:
    knobs = {"min_steps": cfg.min_steps, "max_steps": cfg.max_steps, "max_operand": cfg.max_operand, **settings}
    return arith.generate(n, seed, knobs["min_steps"], knobs["max_steps"], knobs["max_operand"])


def _plain(p: arith.Problem) -> Item:
    return Item(p.question(), p.answer, p.difficulty, {s: p.solution(s) for s in arith.STYLES})


def _new_phrase(s: arith.Step, name: str) -> str:
    if s.op == "+":
        return f"Later {name} receives {s.operand} extra."
    if s.op == "-":
        return f"Later {name} hands over {s.operand}."
    return f"Later the collection becomes {s.operand} times as large."


def base(n: int, seed: int, cfg: ArithConfig, how: ShiftConfig) -> list[Item]:
    """The profile's own generator settings, unchanged."""
    return [_plain(p) for p in _base_problems(n, seed, cfg)]


def names(n: int, seed: int, cfg: ArithConfig, how: ShiftConfig) -> list[Item]:
    """The generator's own sentences about people it never names: the mildest shift."""
    rng = random.Random(seed + 3)
    return [_plain(dataclasses.replace(p, name=rng.choice(NEW_NAMES))) for p in _base_problems(n, seed, cfg)]


def phrasing(n: int, seed: int, cfg: ArithConfig, how: ShiftConfig) -> list[Item]:
    """The same problems with names and items the generator never uses and every sentence reworded."""
    rng = random.Random(seed + 1)
    items = []
    for p in _base_problems(n, seed, cfg):
        q = dataclasses.replace(p, name=rng.choice(NEW_NAMES), item=rng.choice(NEW_ITEMS))
        text = " ".join([f"At first {q.name} owns {q.start} {q.item}.", *(_new_phrase(s, q.name) for s in q.steps),
                         f"What number of {q.item} does {q.name} hold in the end?"])
        items.append(Item(text, q.answer, q.difficulty, {s: q.solution(s) for s in arith.STYLES}))
    return items


def operands(n: int, seed: int, cfg: ArithConfig, how: ShiftConfig) -> list[Item]:
    """The generator's own text with operands up to operand_factor times the profile's max_operand."""
    return [_plain(p) for p in _base_problems(n, seed, cfg, max_operand=how.max_operand(cfg))]


def long_chains(n: int, seed: int, cfg: ArithConfig, how: ShiftConfig) -> list[Item]:
    """The generator's own text with 1 to extra_steps more steps than the profile's max_steps."""
    return [_plain(p) for p in _base_problems(n, seed, cfg, min_steps=cfg.max_steps + 1,
                                              max_steps=cfg.max_steps + how.extra_steps)]


def _distractor_number(p: arith.Problem) -> int:
    """A distractor's number, in the range of the problem's own numbers so its size does not give it away."""
    return max(2, p.start, *(s.operand for s in p.steps))


def distractor_sentences(rng: random.Random, p: arith.Problem, most: int) -> list[str]:
    """1 to `most` irrelevant sentences about someone else or nothing countable."""
    others = [name for name in arith.NAMES if name != p.name]
    other_items = [item for item in arith.ITEMS if item != p.item]
    return [rng.choice(DISTRACTORS).format(other=rng.choice(others), k=rng.randint(1, _distractor_number(p)),
                                           other_item=rng.choice(other_items), weather=rng.choice(WEATHER))
            for _ in range(rng.randint(1, most))]


def sentences(text: str) -> list[str]:
    """A question's sentences, each with its final mark (the generator writes no other full stops)."""
    return re.split(r"(?<=[.?]) ", text)


def distractors(n: int, seed: int, cfg: ArithConfig, how: ShiftConfig) -> list[Item]:
    """The generator's own problems with 1 to max_distractors irrelevant sentences inserted after the first
    sentence and before the question; deleting them gives the generator's text back."""
    rng = random.Random(seed + 2)
    items = []
    for p in _base_problems(n, seed, cfg):
        parts = sentences(p.question())
        for extra in distractor_sentences(rng, p, how.max_distractors):
            parts.insert(rng.randint(1, len(parts) - 1), extra)
        items.append(Item(" ".join(parts), p.answer, p.difficulty, {s: p.solution(s) for s in arith.STYLES}))
    return items


SHIFTS: dict[str, Callable[[int, int, ArithConfig, ShiftConfig], list[Item]]] = {
    "names": names,
    "phrasing": phrasing,
    "operands": operands,
    "long": long_chains,
    "distractors": distractors,
}
BASE = "base"
BUILDERS = {BASE: base, **SHIFTS}


def shift_task(shift: str) -> str:
    """The task name a shift's rows carry, so one table can hold every shift and each is grouped by it."""
    return "arith" if shift == BASE else f"arith_{shift}"


def questions_table(shift: str, n: int, seed: int, cfg: ArithConfig, split: str, prefix: str,
                    how: ShiftConfig | None = None) -> pd.DataFrame:
    """`n` distinct questions of one shift as a questions table (schema.TABLES['questions']), ids `<prefix>-<shift>-i`.

    Over-generates and keeps each question text once; the same seed gives the same table.
    """
    if shift not in BUILDERS:
        raise ValueError(f"unknown shift {shift!r}; known: {', '.join(BUILDERS)}")
    if n < 1:
        raise ValueError(f"n must be >= 1 questions per set, got {n}")
    seen: set[str] = set()
    kept = []
    for item in BUILDERS[shift](2 * n + 50, seed, cfg, how or ShiftConfig()):
        if len(kept) < n and item.question not in seen:
            kept.append(item)
            seen.add(item.question)
    return pd.DataFrame([{"id": f"{prefix}-{shift}-{i:05d}", "task": shift_task(shift), "question": item.question,
                          "answer": str(item.answer), "split": split, "difficulty": item.difficulty, "choices": None,
                          "meta": json.dumps(item.solutions)} for i, item in enumerate(kept)])
