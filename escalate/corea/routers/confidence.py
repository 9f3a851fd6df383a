"""COREA's cascade router (arXiv 2603.03752): the SLM states its confidence, and a low one escalates.

The SLM must be a COREA-trained (or warm-up) checkpoint, which ends each answer with
"Confidence: 0.xx" (escalate.corea.confidence). A response whose confidence is missing or
malformed scores 0, so every threshold above 0 escalates it.
Run by name, like every router: `evaluation.strategies: [corea_confidence]` or `escalate corea train`.
"""

from __future__ import annotations

import numpy as np

from escalate.corea.confidence import parse_confidence
from escalate.routers.base import Router, RouterInputs


class CoreaConfidenceRouter(Router):
    """Score = the confidence the greedy response states, in [0, 1]."""

    name = "corea_confidence"
    mode = "cascade"
    is_probability = True  # trained by a proper scoring rule to be P(SLM correct)
    cheap_to_score = True

    def score(self, inputs: RouterInputs) -> np.ndarray:
        return np.asarray([parse_confidence(t).value for t in inputs.greedy_column("text")], dtype=float)
