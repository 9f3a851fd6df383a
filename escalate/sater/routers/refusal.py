"""SATER's refusal router (arXiv 2510.05164): a SATER-trained SLM answers short or prints the refusal,
and the refusal escalates at once, without a full generation.

A refusal is what `escalate.data.schema.is_refusal` says it is: the one definition every strategy uses.
Run by name, like every router: `evaluation.strategies: [sater_refusal]` or `escalate sater train`.
"""

from __future__ import annotations

import math

import numpy as np

from escalate.data.schema import is_refusal
from escalate.routers.base import Router, RouterInputs


class SaterRefusalRouter(Router):
    """Score = the greedy response's first-token probability when it answers, 0 when it refuses.

    A refusal scores 0: keeping it would keep no answer, so every threshold above 0 escalates it at
    once (SATER's cascade). An answer scores q = exp(sum of the log-probs of its first
    `prefix_tokens` tokens): the answer's prefix is a different token path from the refusal's, so
    q <= 1 − P(the response starts with the refusal), and hesitant answers rank below sure ones. An
    empty answer scores 0. Only the first tokens are read, so a deployment can decide after
    generating just those.
    """

    name = "sater_refusal"
    mode = "cascade"
    is_probability = False  # the probability of an answer prefix, not a calibrated P(correct)
    cheap_to_score = True

    def __init__(self, prefix_tokens: int = 4) -> None:
        if prefix_tokens < 1:
            raise ValueError(f"prefix_tokens must be >= 1, got {prefix_tokens}")
        self.prefix_tokens = prefix_tokens

    def score(self, inputs: RouterInputs) -> np.ndarray:
        scores = []
        for lps, text in zip(inputs.greedy_column("token_logprobs"), inputs.greedy_column("text", None)):
            refuses = is_refusal(text)
            head = list(lps)[: self.prefix_tokens]
            scores.append(0.0 if refuses or not head else math.exp(sum(head)))
        return np.asarray(scores, dtype=float)
