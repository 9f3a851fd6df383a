"""P(T): the probability the SLM gives its own final-answer tokens (arXiv 2602.22090's P(T))."""

from __future__ import annotations

import numpy as np

from escalate.routers.base import Router, RouterInputs


class TokenProbRouter(Router):
    name = "p_true_token"
    mode = "cascade"
    is_probability = True
    top_logprobs_needed = 1  # the answer tokens' own log-probabilities
    cheap_to_score = True

    def score(self, inputs: RouterInputs) -> np.ndarray:
        lp = np.asarray(inputs.greedy_column("answer_logprob"), dtype=float)
        # No answer found in the response: nothing to trust, escalate first.
        return np.where(np.isnan(lp), 0.0, np.exp(np.nan_to_num(lp, nan=-np.inf)))
