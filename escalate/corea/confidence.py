"""COREA's response format: the answer, then a verbalized confidence, `... The answer is 7. Confidence: 0.85`.

One parser reads it everywhere: the rewards that train it, the router that escalates on it and the
report that counts how often it fails. A missing or malformed confidence reads as 0, so the cascade
escalates a response whose confidence it cannot read rather than trust it.
Run from Python: `parse_confidence(text)`, `with_confidence(answer, 0.85)`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

TAG = "Confidence:"
_TAG = re.compile(r"confidence\s*:", re.IGNORECASE)
# After the last tag: a decimal number, an optional final period, nothing else.
_VALUE = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*\.?\s*")

Status = Literal["ok", "missing", "malformed"]


@dataclass(frozen=True)
class Stated:
    """A response's stated confidence: `value` in [0, 1] (0 unless `status` is "ok")."""

    value: float
    status: Status


def parse_confidence(text: str | None) -> Stated:
    """Read the confidence a response ends with.

    "ok": exactly one tag (any case), something before it, and a number in [0, 1] that ends the
    response (a final period allowed). "missing": no tag. "malformed": anything else (a second
    tag, a value above 1, words after the number, a tag with no answer before it). A model that
    states two confidences or keeps talking has not followed the format, and its router should not
    pick one reading for it.
    """
    if not isinstance(text, str):
        return Stated(0.0, "missing")
    tags = list(_TAG.finditer(text))
    if not tags:
        return Stated(0.0, "missing")
    value = _VALUE.fullmatch(text, tags[-1].end())
    if len(tags) > 1 or value is None or not text[: tags[-1].start()].strip():
        return Stated(0.0, "malformed")
    number = float(value.group(1))
    return Stated(number, "ok") if number <= 1 else Stated(0.0, "malformed")


def with_confidence(response: str, confidence: float) -> str:
    """A response in COREA's format: the answer as given, then the confidence with two decimals."""
    if not 0 <= confidence <= 1:
        raise ValueError(f"confidence must be in [0, 1], got {confidence}")
    return f"{response.rstrip()} {TAG} {confidence:.2f}"


def confidence_counts(texts: Iterable[str | None]) -> dict[str, float]:
    """How many responses stated a readable confidence, and how many read as 0 because they did not."""
    statuses = [parse_confidence(t).status for t in texts]
    n = len(statuses)
    counts: dict[str, float] = {"n": n, **{s: statuses.count(s) for s in ("ok", "missing", "malformed")}}
    counts["unreadable_rate"] = (counts["missing"] + counts["malformed"]) / n if n else float("nan")
    return counts


def distinct_confidences(texts: Iterable[str | None]) -> int:
    """How many different readable confidences the responses state: a score that takes two values cannot rank."""
    return len({stated.value for stated in map(parse_confidence, texts) if stated.status == "ok"})
