"""CITER as a cascade: the token-level decoder behind escalate.cascade.Cascade's `answer`/`close` surface.

A token-level bundle builds one (escalate.kinds.token, through escalate.registry.bundle.build_cascade),
and the gateway runs it in its own process (HF, torch), because no vLLM server steps two models token
by token with one router between them. Each answer has escalate.cascade.RESULT_FIELDS, read as follows:

- `model`: "slm" when the SLM wrote every token, "llm" when the LLM did (τ = 0), else "slm+llm" (MIXED);
- `escalated`: whether the LLM wrote any token;
- `confidence`: 1 − the router's largest P(LLM needed) over the answer's tokens. As for a query-level
  cascade, a low confidence is what escalates: the LLM wrote a token exactly where P > τ, so an
  answer escalated iff its confidence < 1 − τ;
- `threshold`: τ;
- costs and tokens per model as `billed_tokens` counts them, priced by the bundle's cost model; the
  router's MLP costs 0 there, since the profile's cost models price only the two language models
  (CITER's own report counts its bytes moved);
- latency per model (the time in its forward passes) and in all.

    cascade = TokenLevelCascade.from_checkpoints(slm_cfg, llm_cfg, {"slm": slm_dir, "llm": llm_dir},
                                                 TokenRouter.load(router_dir), tau, cost, sampling)
    cascade.answer(["Eva has 7 cups. Then gives away 1. How many cups does Eva have now?"])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from escalate.cascade import MIXED, ROLES, question_rows
from escalate.citer import STRATEGY
from escalate.citer.decode import TokenLevelDecoder, TokenLevelGeneration, load_pair
from escalate.config import ModelConfig, SamplingConfig
from escalate.data.graders import EXTRACTORS
from escalate.evaluation.cost import CostModel
from escalate.prompts import format_prompt
from escalate.sampling import grader_kind


def billed_tokens(n_prompt: int, sources: Sequence[str]) -> dict[str, tuple[int, int]]:
    """(input, output) tokens each model is billed for in one token-level answer, by role.

    The SLM reads the prompt and steps on every position, whichever model's token goes there, so it
    is billed as SLM-only decoding of the whole answer. The LLM is billed for the tokens it writes as
    output, and as input for the prompt and every SLM token before its last one: tokens it did not
    write but read to catch its cache up. Its own earlier tokens are not billed again as input, as
    an API does not bill a model's output fed back to it. So τ = 0 bills exactly what LLM-only
    decoding would, τ = 1 exactly SLM-only, and an LLM that never ran nothing.
    """
    if n_prompt < 1 or not sources or set(sources) - set(ROLES):
        raise ValueError(f"need a prompt, at least one token and sources in {ROLES}; got {n_prompt}, {list(sources)}")
    llm = [i for i, s in enumerate(sources) if s == "llm"]
    read = n_prompt + sum(s == "slm" for s in sources[: llm[-1]]) if llm else 0
    return {"slm": (n_prompt, len(sources)), "llm": (read, len(llm))}


def token_level_cost(cost: CostModel, billed: Mapping[str, tuple[int, int]]) -> dict[str, float]:
    """Each model's cost of one token-level answer: its billed (input, output) tokens under a query-level
    cost model (token prices or FLOPs), so CITER is priced on the same scale as every cascade.
    A model billed no token never ran and costs 0."""
    return {role: cost.cost(role, *billed[role]) if any(billed[role]) else 0.0 for role in ROLES}


def answered_by(sources: Sequence[str]) -> str:
    """The `model` of an answer: the one role that wrote every token, or MIXED."""
    found = set(sources)
    return found.pop() if len(found) == 1 else MIXED


@dataclass
class TokenLevelCascade:
    """An SLM, an LLM, a token router and τ: answers questions and says which model wrote what, at what cost.

    Decoding is greedy, as the citer stage evaluated it; `max_new_tokens` is the profile's.
    """

    decoder: TokenLevelDecoder
    cost: CostModel
    max_new_tokens: int
    strategy: str = STRATEGY

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        for role in ROLES:  # a cost model without a role would fail mid-request; fail here instead
            self.cost.cost(role, 0, 0)

    @classmethod
    def from_checkpoints(cls, slm: ModelConfig, llm: ModelConfig, checkpoints: Mapping[str, str | Path],
                         router: torch.nn.Module, tau: float, cost: CostModel,
                         sampling: SamplingConfig) -> TokenLevelCascade:
        """Load both checkpoints (dtype, device, chat template from their ModelConfigs) around a loaded router."""
        if slm.device != llm.device or slm.chat_template != llm.chat_template:
            raise ValueError(f"token-level decoding runs both models on one device with one prompt format; the SLM "
                             f"has device {slm.device!r}, chat_template {slm.chat_template}, the LLM "
                             f"{llm.device!r}, {llm.chat_template}: set them alike")
        small, large, tokenizer = load_pair(checkpoints["slm"], checkpoints["llm"], slm.device, slm.dtype, llm.dtype)
        decoder = TokenLevelDecoder(small, large, tokenizer, router.to(small.device), tau, sampling.batch_size,
                                    slm.chat_template)
        return cls(decoder, cost, sampling.max_new_tokens)

    @property
    def tau(self) -> float:
        return self.decoder.tau

    def answer(self, questions: list[str], choices: list[Any] | None = None,
               decode: Callable[[list[str]], list[TokenLevelGeneration]] | None = None) -> list[dict]:
        """One dict per question (RESULT_FIELDS): the answer, who wrote it, the router's confidence, cost, latency.

        `decode`: prompts to generations in their place, e.g. a server's escalate.serving.batcher.DecodeBatcher,
        which decodes them beside other requests' to the same tokens; by default this decoder, alone.
        """
        rows = question_rows(questions, choices)
        if not rows:
            return []
        prompts = [format_prompt(q["question"], q["choices"]) for q in rows]
        gens = decode(prompts) if decode else self.decoder.generate(prompts, self.max_new_tokens)
        return [self._result(row, gen) for row, gen in zip(rows, gens)]

    def close(self) -> None:
        """Drop the models, so a deployment swapped out frees their memory once its last request ends."""
        self.decoder.models.clear()

    def _result(self, question: Any, gen: TokenLevelGeneration) -> dict:
        billed = billed_tokens(gen.n_prompt_tokens, gen.sources)
        cost = token_level_cost(self.cost, billed)
        return {
            "question": question["question"], "answer": gen.text.strip(),
            "parsed_answer": EXTRACTORS[grader_kind(question)](gen.text), "model": answered_by(gen.sources),
            # score: 1 − the router's largest P(LLM needed) over the answer; a per-token router says nothing
            # calibrated about the whole answer being right, so there is no confidence
            "escalated": "llm" in gen.sources, "confidence": math.nan, "score": 1.0 - max(gen.llm_scores),
            "strategy": self.strategy,
            "threshold": self.tau, "cost_slm": cost["slm"], "cost_llm": cost["llm"], "cost_router": 0.0,
            "cost": cost["slm"] + cost["llm"], "latency_slm_s": gen.seconds["slm"],
            "latency_router_s": gen.seconds["router"], "latency_llm_s": gen.seconds["llm"], "latency_s": gen.latency_s,
            "slm_prompt_tokens": billed["slm"][0], "slm_output_tokens": billed["slm"][1],
            "llm_prompt_tokens": billed["llm"][0], "llm_output_tokens": billed["llm"][1],
        }
