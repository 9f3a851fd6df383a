"""COREA's response format: the confidence parser's edge cases, the formatter, the counts and the router."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from escalate.corea.confidence import Stated, confidence_counts, distinct_confidences, parse_confidence, with_confidence
from escalate.routers.base import RouterInputs
from escalate.routers.registry import make_router


@pytest.mark.parametrize(("text", "expected"), [
    (" The answer is 7. Confidence: 0.85", Stated(0.85, "ok")),
    (" The answer is 7. Confidence: 0.85.", Stated(0.85, "ok")),  # a final period
    (" The answer is 7.\nconfidence:0.3  \n", Stated(0.3, "ok")),  # any case, no space, trailing whitespace
    (" The answer is 7. Confidence: 1", Stated(1.0, "ok")),
    (" The answer is 7. Confidence: 1.00", Stated(1.0, "ok")),
    (" The answer is 7. Confidence: 0", Stated(0.0, "ok")),
    (" The answer is 7. Confidence: .5", Stated(0.5, "ok")),
    (" The answer is 7.", Stated(0.0, "missing")),
    ("", Stated(0.0, "missing")),
    (None, Stated(0.0, "missing")),
    (" The answer is 7. Confidence:", Stated(0.0, "malformed")),  # no value
    (" The answer is 7. Confidence: high", Stated(0.0, "malformed")),
    (" The answer is 7. Confidence: 1.5", Stated(0.0, "malformed")),  # above 1
    (" The answer is 7. Confidence: 85%", Stated(0.0, "malformed")),
    (" The answer is 7. Confidence: -0.2", Stated(0.0, "malformed")),
    (" The answer is 7. Confidence: 0.9 because 3 + 4 = 7", Stated(0.0, "malformed")),  # talks on
    (" Confidence: 0.2 The answer is 7. Confidence: 0.9", Stated(0.0, "malformed")),  # two confidences
    ("Confidence: 0.9", Stated(0.0, "malformed")),  # no answer before it
])
def test_parse_confidence(text: str | None, expected: Stated) -> None:
    got = parse_confidence(text)
    assert got.status == expected.status
    assert got.value == pytest.approx(expected.value)


def test_with_confidence_round_trips_with_two_decimals() -> None:
    text = with_confidence(" The answer is 12.\n", 0.375)
    assert text == " The answer is 12. Confidence: 0.38"  # the answer keeps its leading space
    assert parse_confidence(text) == Stated(0.38, "ok")
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        with_confidence(" The answer is 1.", 1.2)


def test_counts_say_how_often_the_confidence_read_as_zero() -> None:
    counts = confidence_counts([" The answer is 1. Confidence: 0.9", " The answer is 2.",
                                " The answer is 3. Confidence: 2", " The answer is 4. Confidence: 0.1"])
    assert counts == {"n": 4, "ok": 2, "missing": 1, "malformed": 1, "unreadable_rate": 0.5}
    assert math.isnan(confidence_counts([])["unreadable_rate"])


def test_router_scores_the_greedy_responses_stated_confidence_in_question_order() -> None:
    questions = pd.DataFrame({"id": ["a", "b", "c"], "question": ["qa", "qb", "qc"], "split": "test"})
    samples = pd.DataFrame({
        "id": ["c", "b", "a", "a"], "sample_idx": [0, 0, 1, 0],
        "text": [" The answer is 3.", " The answer is 2. Confidence: 0.2", " The answer is 1. Confidence: 0.1",
                 " The answer is 1. Confidence: 0.9"],
    })
    router = make_router("corea_confidence")
    inputs = RouterInputs(questions, samples)
    np.testing.assert_allclose(router.score(inputs), [0.9, 0.2, 0.0])  # sample 1 of "a" is not read; "c" states none
    assert list(router.escalate(inputs, 0.5)) == [False, True, True]
    assert router.is_probability and router.mode == "cascade" and not router.uses_all_samples


def test_distinct_confidences_counts_readable_values_only() -> None:
    texts = ["x Confidence: 0.90", "y Confidence: 0.9", "z Confidence: 0.40", "no tag", "w Confidence: 1.7", None]
    assert distinct_confidences(texts) == 2  # 0.90 and 0.9 are one value; missing and malformed ones are not counted
