"""The random router: sends a random fraction to the LLM before generation (the floor to beat)."""

from __future__ import annotations

import numpy as np

from escalate.routers.base import Router, RouterInputs


class RandomRouter(Router):
    name = "random"
    mode = "pregen"
    is_probability = False
    top_logprobs_needed = 0

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def score(self, inputs: RouterInputs) -> np.ndarray:
        return np.random.default_rng(self.seed).random(inputs.n_questions)
