"""TextMemo: each distinct text computed once, in batches, and the least recently used forgotten past the bound."""

from __future__ import annotations

import pytest

from escalate.routers.memo import TextMemo


class Lengths:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> list[int]:
        self.calls.append(list(texts))
        return [len(t) for t in texts]


def test_each_distinct_text_is_computed_once_in_batches() -> None:
    compute = Lengths()
    memo = TextMemo(compute, batch_size=2)
    assert memo(["a", "bb", "a", "ccc"]) == [1, 2, 1, 3]
    assert compute.calls == [["a", "bb"], ["ccc"]]
    assert memo(["ccc", "dddd", "bb"]) == [3, 4, 2]
    assert compute.calls[-1] == ["dddd"]
    assert memo([]) == []


def test_the_least_recently_used_text_is_forgotten_past_the_bound() -> None:
    compute = Lengths()
    memo = TextMemo(compute, batch_size=8, max_items=2)
    memo(["a", "bb"])
    memo(["a"])  # "a" is now the most recently used
    memo(["ccc"])
    assert len(memo) == 2
    compute.calls.clear()
    assert memo(["a", "bb"]) == [1, 2]
    assert compute.calls == [["bb"]]


def test_one_call_larger_than_the_bound_still_answers_every_text() -> None:
    memo = TextMemo(Lengths(), batch_size=2, max_items=1)
    assert memo(["a", "bb", "ccc"]) == [1, 2, 3]
    assert len(memo) == 1


def test_a_compute_that_returns_the_wrong_count_fails_loudly() -> None:
    memo = TextMemo(lambda texts: [0], batch_size=4)
    with pytest.raises(ValueError):
        memo(["a", "b"])


@pytest.mark.parametrize("batch_size, max_items", [(0, 1), (1, 0)])
def test_bounds_below_one_are_refused(batch_size: int, max_items: int) -> None:
    with pytest.raises(ValueError, match="≥ 1"):
        TextMemo(Lengths(), batch_size=batch_size, max_items=max_items)
