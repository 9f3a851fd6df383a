"""Predictive entropy: the SLM's mean per-token entropy; less uncertainty, higher score."""

from __future__ import annotations

import numpy as np

from escalate.routers.base import Router, RouterInputs


class EntropyRouter(Router):
    name = "entropy"
    mode = "cascade"
    is_probability = False

    def score(self, inputs: RouterInputs) -> np.ndarray:
        return -inputs.greedy()["mean_entropy"].astype(float).to_numpy()
