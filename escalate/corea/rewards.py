"""COREA's rewards as plain TRL reward functions: `(completions, **kwargs) -> list[float]`, one per completion.

- `correctness`: 1 when the evaluation grader (escalate.data.graders.GRADERS) accepts the response,
  the same call sampling makes, so RL and evaluation cannot disagree on what is right.
- `format_ok`: 1 when the response ends with one readable confidence (escalate.corea.confidence).
- `calibration`: 1 − (confidence − correct)², the Brier score turned into a reward. It is a proper
  scoring rule: its expectation is highest when the stated confidence equals the probability of
  being right, so it rewards honesty rather than boldness or modesty.

RLVR, the baseline, trains on correctness and format only; COREA adds calibration. GRPOTrainer
passes the dataset's columns as keyword arguments: `answer` (the gold answer) and `kind` (the
grader, "numeric" or "choice", as escalate.sampling.grader_kind says).
Run by GRPO (escalate.corea.grpo), from `escalate corea train --profile tiny`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from escalate.corea.confidence import parse_confidence
from escalate.data.graders import GRADERS

RewardFunc = Callable[..., list[float]]


def _texts(completions: Sequence) -> list[str]:
    """Completion texts: plain strings, or the last message of a conversational completion."""
    return [c if isinstance(c, str) else c[-1]["content"] for c in completions]


def correctness(completions: Sequence, answer: Sequence[str], kind: Sequence[str], **kwargs: object) -> list[float]:
    return [float(GRADERS[k](t, str(a))) for t, a, k in zip(_texts(completions), answer, kind)]


def format_ok(completions: Sequence, **kwargs: object) -> list[float]:
    return [float(parse_confidence(t).status == "ok") for t in _texts(completions)]


def calibration(completions: Sequence, answer: Sequence[str], kind: Sequence[str], **kwargs: object) -> list[float]:
    """1 − (confidence − correct)² for a readable confidence; 0 for an unreadable one.

    An unreadable confidence reads as 0 for routing, but scoring it as 0 here would pay a wrong
    answer the full reward for dropping its confidence; it earns nothing instead.
    """
    right = correctness(completions, answer, kind)
    stated = [parse_confidence(t) for t in _texts(completions)]
    return [1.0 - (s.value - y) ** 2 if s.status == "ok" else 0.0 for s, y in zip(stated, right)]


def reward_functions(calibrated: bool) -> list[RewardFunc]:
    """COREA's rewards (calibrated) or RLVR's (correctness and format only), in the order weights refer to."""
    return [correctness, format_ok, calibration] if calibrated else [correctness, format_ok]
