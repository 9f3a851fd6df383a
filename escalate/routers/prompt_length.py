"""Prompt length: longer questions are often harder; calib decides the direction and the scale.

A one-feature logistic regression on log(characters) turns length into P(SLM correct), so if calib
shows long prompts are the easy ones the router learns that too.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

from escalate.routers.base import RouterInputs
from escalate.routers.learned import ClassifierRouter


class PromptLengthRouter(ClassifierRouter):
    name = "prompt_length"

    def _features(self, inputs: RouterInputs) -> np.ndarray:
        return np.log1p([len(t) for t in inputs.question_texts()]).reshape(-1, 1)

    def _classifier(self, n_train: int) -> LogisticRegression:
        return LogisticRegression()
