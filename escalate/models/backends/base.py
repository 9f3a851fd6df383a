"""The one interface every generation backend implements.

A backend turns prompts into generations that carry the same fields whatever produced them (text,
token ids, per-token log-probabilities and entropies, token counts, latency), so that P(T), entropy,
cost and latency come out the same for in-process Hugging Face, offline vLLM and HTTP endpoints.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Protocol

import anyio


class ModelSettings(Protocol):
    """What building a backend reads of a model's settings. escalate.config.ModelConfig is one; the profile
    layer sits above this one (it asks the registry which backends are self-hosted), so it is not imported here."""

    name: str
    source: str
    backend: str
    endpoint: str | None
    api_key_env: str | None
    dtype: str
    device: str
    chat_template: bool
    top_logprobs: int


class BackendError(RuntimeError):
    """A backend could not produce generations (down, misconfigured, bad response)."""


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. temperature 0 means greedy; n is the number of generations per prompt."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    seed: int = 0
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")


@dataclass
class Generation:
    """One generated continuation.

    token_logprobs are log-probabilities of the emitted tokens under the model's own (temperature 1)
    distribution, so they mean the same whether the token was sampled or greedy. token_entropies are
    the entropies (nats) of that distribution at each step; backends that only see the top-k
    log-probabilities (vLLM, HTTP) compute them over the renormalised top-k. token_offsets are the
    character offsets in `text` where each token starts, so an answer found in the text can be
    mapped back to its tokens (P(T)); empty when a backend cannot tell.
    """

    text: str
    token_ids: list[int]
    token_logprobs: list[float]
    token_entropies: list[float] = field(default_factory=list)
    token_offsets: list[int] = field(default_factory=list)
    n_prompt_tokens: int = 0
    latency_s: float = 0.0
    finish_reason: str = "stop"

    @property
    def n_output_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def mean_entropy(self) -> float:
        return float(sum(self.token_entropies) / len(self.token_entropies)) if self.token_entropies else 0.0


class GenerationBackend(ABC):
    """Generates continuations for a batch of prompts; one instance serves one model."""

    name: str = "base"

    @abstractmethod
    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Generation]]:
        """Return, for each prompt, `params.n` generations in order."""

    async def agenerate(self, prompts: list[str], params: SamplingParams) -> list[list[Generation]]:
        """generate() for an event loop. In-process backends compute, so they compute on a worker thread;
        an HTTP backend waits, and overrides this to wait without one."""
        return await anyio.to_thread.run_sync(self.generate, prompts, params)

    def close(self) -> None:  # noqa: B027 (an optional hook with a no-op default, not abstract)
        """Release what the backend holds (servers, GPU memory); a no-op by default."""


def offsets_from_pieces(pieces: list[str]) -> list[int]:
    """Start offsets of consecutive text pieces (decoded tokens) in their concatenation."""
    offsets, pos = [], 0
    for piece in pieces:
        offsets.append(pos)
        pos += len(piece)
    return offsets


def entropy_from_logprobs(logprobs: list[float]) -> float:
    """Entropy (nats) of the distribution given by (possibly truncated) log-probabilities, renormalised."""
    if not logprobs:
        return 0.0
    m = max(logprobs)
    ps = [math.exp(lp - m) for lp in logprobs]
    z = sum(ps)
    return float(-sum((p / z) * math.log(p / z) for p in ps if p > 0))
