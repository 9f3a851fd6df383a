"""One computed value per distinct text, bounded, for the routers that read a model per prompt.

Cross-validation and threshold sweeps score the same prompts many times, so the embedding and
SLM-reading routers keep what they computed; a gateway sees an unbounded stream of distinct
prompts, so the memo forgets the least recently used past `max_items`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

V = TypeVar("V")


class TextMemo(Generic[V]):
    """texts -> values, computing only the texts not already held, `batch_size` at a time."""

    def __init__(self, compute: Callable[[list[str]], Sequence[V]], batch_size: int,
                 max_items: int = 50_000) -> None:
        if batch_size < 1 or max_items < 1:
            raise ValueError(f"batch_size and max_items must be ≥ 1, got {batch_size} and {max_items}")
        self.compute = compute
        self.batch_size = batch_size
        self.max_items = max_items
        self._held: OrderedDict[str, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._held)

    def __call__(self, texts: Sequence[str]) -> list[V]:
        unique = dict.fromkeys(texts)
        found: dict[str, V] = {}
        for text in unique:
            if text in self._held:
                self._held.move_to_end(text)
                found[text] = self._held[text]
        new = [t for t in unique if t not in found]
        for start in range(0, len(new), self.batch_size):
            part = new[start : start + self.batch_size]
            found.update(zip(part, self.compute(part), strict=True))
        self._held.update((t, found[t]) for t in new)
        while len(self._held) > self.max_items:
            self._held.popitem(last=False)
        return [found[t] for t in texts]
