"""Sequence log-probability routers: mean and minimum token log-probability of the SLM's response."""

from __future__ import annotations

import numpy as np

from escalate.routers.base import Router, RouterInputs


def _reduce(inputs: RouterInputs, how: str) -> np.ndarray:
    values = [getattr(np, how)(lps) if len(lps) else -np.inf for lps in inputs.greedy_column("token_logprobs")]
    return np.exp(np.asarray(values, dtype=float))


class MeanLogprobRouter(Router):
    """exp(mean token log-probability): the geometric-mean token probability, in [0, 1]."""

    name = "mean_logprob"
    mode = "cascade"
    is_probability = True
    top_logprobs_needed = 1
    cheap_to_score = True

    def score(self, inputs: RouterInputs) -> np.ndarray:
        return _reduce(inputs, "mean")


class MinLogprobRouter(Router):
    """exp(min token log-probability): the least confident token decides."""

    name = "min_logprob"
    mode = "cascade"
    is_probability = True
    top_logprobs_needed = 1
    cheap_to_score = True

    def score(self, inputs: RouterInputs) -> np.ndarray:
        return _reduce(inputs, "min")
