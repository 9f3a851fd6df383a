"""Predictive entropy: the SLM's mean per-token entropy; less uncertainty, higher score."""

from __future__ import annotations

import numpy as np

from escalate.routers.base import Router, RouterInputs


class EntropyRouter(Router):
    name = "entropy"
    mode = "cascade"
    is_probability = False
    top_logprobs_needed = 20  # a top-20 entropy (bench/results/gateway_overhead.md: its error); "full" for parity
    cheap_to_score = True

    def score(self, inputs: RouterInputs) -> np.ndarray:
        return -np.asarray(inputs.greedy_column("mean_entropy"), dtype=float)
