"""Cost models: how much one model's part of a query costs, in the units a report names.

METRICS.md normalizes every strategy's cost by LLM-only, so only ratios between models matter; a
cost model is chosen by registry name (COST_MODELS) and reports say which one was used through
`describe()`, since "40% cheaper" means different things under API prices and under FLOPs.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


class CostModel(ABC):
    """Prices one generation of one model role ("slm", "llm", ...) from its token counts."""

    @abstractmethod
    def cost(self, model: str, n_prompt_tokens: int, n_output_tokens: int) -> float:
        """Cost units spent by `model` reading `n_prompt_tokens` and writing `n_output_tokens`."""

    @abstractmethod
    def describe(self) -> str:
        """One line for reports, so every cost figure names the cost model it came from."""


def _lookup(table: Mapping[str, T], model: str) -> T:
    """The entry for a model role; a typo in a role must fail loudly, not cost zero."""
    if model not in table:
        raise KeyError(f"unknown model role {model!r}; known: {', '.join(sorted(table))}")
    return table[model]


def _check_tokens(n_prompt_tokens: int, n_output_tokens: int) -> None:
    if n_prompt_tokens < 0 or n_output_tokens < 0:
        raise ValueError(f"token counts must be >= 0, got {n_prompt_tokens} and {n_output_tokens}")


def _human(n: float) -> str:
    """5e8 -> '500M': parameter counts as people write them."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:g}{suffix}"
    return f"{n:g}"


@dataclass(frozen=True)
class TokenPriceCost(CostModel):
    """Per-token (prompt, output) prices per model role, e.g. {"slm": (0.05, 0.1), "llm": (1.0, 2.0)}.

    Output tokens usually cost more than prompt tokens (API price lists), hence two prices.
    """

    prices: dict[str, tuple[float, float]]

    def __post_init__(self) -> None:
        if not self.prices:
            raise ValueError("prices must name at least one model role")
        for model, pair in self.prices.items():
            if len(pair) != 2 or not all(math.isfinite(p) and p >= 0 for p in pair):
                raise ValueError(f"prices[{model!r}] must be two finite prices >= 0, got {pair!r}")

    def cost(self, model: str, n_prompt_tokens: int, n_output_tokens: int) -> float:
        _check_tokens(n_prompt_tokens, n_output_tokens)
        prompt_price, output_price = _lookup(self.prices, model)
        return float(prompt_price * n_prompt_tokens + output_price * n_output_tokens)

    def describe(self) -> str:
        parts = ", ".join(f"{m} {p:g}/{o:g}" for m, (p, o) in sorted(self.prices.items()))
        return f"token prices per token (prompt/output): {parts}"


@dataclass(frozen=True)
class FlopsCost(CostModel):
    """FLOPs = 2 · parameters · tokens per model role: the hardware-neutral compute estimate."""

    params: dict[str, int]

    def __post_init__(self) -> None:
        if not self.params:
            raise ValueError("params must name at least one model role")
        for model, count in self.params.items():
            if count <= 0:
                raise ValueError(f"params[{model!r}] must be > 0, got {count!r}")

    def cost(self, model: str, n_prompt_tokens: int, n_output_tokens: int) -> float:
        _check_tokens(n_prompt_tokens, n_output_tokens)
        return float(2 * _lookup(self.params, model) * (n_prompt_tokens + n_output_tokens))

    def describe(self) -> str:
        parts = ", ".join(f"{m} {_human(n)}" for m, n in sorted(self.params.items()))
        return f"FLOPs = 2 · parameters · tokens (parameters: {parts})"


@dataclass(frozen=True)
class BytesMovedCost(CostModel):
    """Bytes moved by greedy decoding (CITER's measure): per forward pass, every weight and the KV cache.

    Decoding n_output tokens after an n_prompt-token prompt takes n_output passes (prefill, then one
    per token but the last), and pass j's token attends to n_prompt + j positions, so the cost is
    n_output · weight_bytes + kv_bytes_per_token · (n_output · n_prompt + n_output · (n_output − 1) / 2).
    Small models on real hardware are bound by memory traffic, not arithmetic, which FLOPs miss.
    """

    weight_bytes: dict[str, int]
    kv_bytes_per_token: dict[str, int]

    def __post_init__(self) -> None:
        if not self.weight_bytes or set(self.weight_bytes) != set(self.kv_bytes_per_token):
            raise ValueError("weight_bytes and kv_bytes_per_token must name the same model roles, at least one")
        for model in self.weight_bytes:
            if self.weight_bytes[model] <= 0 or self.kv_bytes_per_token[model] < 0:
                raise ValueError(f"{model!r}: weight bytes must be > 0 and KV bytes >= 0, got "
                                 f"{self.weight_bytes[model]!r}, {self.kv_bytes_per_token[model]!r}")

    def cost(self, model: str, n_prompt_tokens: int, n_output_tokens: int) -> float:
        _check_tokens(n_prompt_tokens, n_output_tokens)
        passes = max(n_output_tokens, 1)  # an empty answer still paid for its prefill
        kv_positions = passes * n_prompt_tokens + passes * (passes - 1) // 2
        return float(passes * _lookup(self.weight_bytes, model) + _lookup(self.kv_bytes_per_token, model) * kv_positions)

    def describe(self) -> str:
        parts = ", ".join(f"{m} {_human(w)}B weights + {_human(self.kv_bytes_per_token[m])}B KV per position"
                          for m, w in sorted(self.weight_bytes.items()))
        return f"bytes moved per decoding pass: weights + KV cache read ({parts})"


COST_MODELS: dict[str, type[CostModel]] = {
    "token_price": TokenPriceCost,
    "flops": FlopsCost,
}


def from_config(kind: str, prices: dict[str, list[float]], n_params: dict[str, int | None]) -> CostModel:
    """The profile's cost model: `token_price` prices per token, `flops` needs every model's parameter count."""
    if kind == "token_price":
        return TokenPriceCost({role: (float(p[0]), float(p[1])) for role, p in prices.items()})
    missing = [role for role, n in n_params.items() if not n]
    if missing:
        raise ValueError(f"cost kind 'flops' needs parameter counts for {missing}; set models.<role>.n_params")
    return FlopsCost({role: int(n) for role, n in n_params.items() if n})
