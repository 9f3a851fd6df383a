"""Graders: one function per answer kind, reused as the RL reward so evaluation and training agree.

A grader takes a model's full response text and the gold answer and says whether it is correct.
`extract_*` pull the final answer out of free text (the "The answer is N." convention of `arith`,
GSM8K's "#### N", or the last number); `reward` wraps a grader in TRL's reward signature.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?"
_ANSWER_IS = re.compile(rf"answer is:?\s*({_NUMBER})", re.IGNORECASE)
_HASHES = re.compile(rf"####\s*({_NUMBER})")
_ANY_NUMBER = re.compile(_NUMBER)
_LETTER_IS = re.compile(r"(?i:answer is):?\s*\(?([A-J])\)?\b")  # the phrase in any case, the letter upper-case
_LONE_LETTER = re.compile(r"^\s*\(?([A-J])(?:[.):]|\s*$)")  # "B", "B.", "(B)"; not the word "A"


def normalize_number(text: str | None) -> str | None:
    """Canonical form of a number ("1,234.0" -> "1234", "$5" -> "5", "0.50" -> "0.5"), or None."""
    if text is None:
        return None
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        value = float(cleaned)
    except ValueError:
        return None
    if value != value or value in (float("inf"), float("-inf")):
        return None
    return str(int(value)) if value.is_integer() else repr(value)


def extract_number(response: str) -> str | None:
    """The response's final numeric answer, normalised: 'answer is N', then '#### N', then the last number."""
    for pattern in (_ANSWER_IS, _HASHES):
        hits = pattern.findall(response)
        if hits:
            return normalize_number(hits[-1])
    hits = _ANY_NUMBER.findall(response)
    return normalize_number(hits[-1]) if hits else None


def extract_choice(response: str) -> str | None:
    """The chosen option letter: 'answer is B', or a response that starts with a letter."""
    hits = _LETTER_IS.findall(response)
    if hits:
        return hits[-1]
    lone = _LONE_LETTER.match(response)
    return lone.group(1) if lone else None


def answer_span(response: str, kind: str = "numeric") -> tuple[int, int] | None:
    """Character span of the final answer in the response (the text whose tokens give P(T))."""
    patterns = (_ANSWER_IS, _HASHES, _ANY_NUMBER) if kind == "numeric" else (_LETTER_IS, _LONE_LETTER)
    for pattern in patterns:
        hits = list(pattern.finditer(response))
        if hits:
            last = hits[-1]
            return last.span(1) if last.groups() else last.span(0)
    return None


def grade_numeric(response: str, gold: str) -> bool:
    pred = extract_number(response)
    return pred is not None and pred == normalize_number(gold)


def grade_choice(response: str, gold: str) -> bool:
    pred = extract_choice(response)
    return pred is not None and pred == gold.strip().upper()


GRADERS: dict[str, Callable[[str, str], bool]] = {"numeric": grade_numeric, "choice": grade_choice}
EXTRACTORS: dict[str, Callable[[str], str | None]] = {"numeric": extract_number, "choice": extract_choice}


def grader_for(kind: str) -> Callable[[str, str], bool]:
    if kind not in GRADERS:
        raise KeyError(f"unknown grader {kind!r}; known: {', '.join(GRADERS)}")
    return GRADERS[kind]


def reward(kind: str = "numeric") -> Callable[..., list[float]]:
    """A TRL reward `(completions, answer, **kwargs) -> list[float]` from the evaluation grader."""
    grade = grader_for(kind)

    def correctness(completions: list, answer: list[str], **kwargs: object) -> list[float]:
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        return [1.0 if grade(t, a) else 0.0 for t, a in zip(texts, answer)]

    correctness.__name__ = f"correctness_{kind}"
    return correctness
