"""Pre-generation routers that learn P(SLM correct) from the question alone with a scikit-learn classifier.

Fitting reads the calib questions and the SLM's greedy correctness; scoring reads only the question
text, never the SLM's output, so the decision is made before generating. A calib split with one
class only yields that class's constant score.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np
from sklearn.base import ClassifierMixin
from threadpoolctl import threadpool_limits

from escalate.routers.base import Router, RouterInputs


def question_texts(inputs: RouterInputs) -> list[str]:
    return inputs.questions["question"].astype(str).tolist()


class ClassifierRouter(Router):
    """Features of the question text -> a classifier -> P(SLM correct); subclasses choose both."""

    mode = "pregen"
    is_probability = True
    top_logprobs_needed = 0  # the question text only

    _clf: ClassifierMixin | None = None
    _constant: float | None = None

    @abstractmethod
    def _features(self, inputs: RouterInputs) -> np.ndarray:
        """One feature row per question, from the question text only."""

    @abstractmethod
    def _classifier(self, n_train: int) -> ClassifierMixin:
        """A fresh, unfitted classifier for n_train calibration questions."""

    def fit(self, calib: RouterInputs) -> ClassifierRouter:
        y = calib.greedy()["correct"].to_numpy(bool)
        if len(np.unique(y)) < 2:
            self._clf, self._constant = None, float(y.mean()) if len(y) else 0.5
        else:
            features = self._features(calib)
            # Many small fits (inner grid searches): one BLAS thread each beats a thread pool's start-up.
            with threadpool_limits(1):
                self._clf, self._constant = self._classifier(len(y)).fit(features, y), None
        return self

    def score(self, inputs: RouterInputs) -> np.ndarray:
        if self._constant is not None:
            return np.full(len(inputs.questions), self._constant)
        if self._clf is None:
            raise RuntimeError(f"router {self.name!r} must be fitted on a calib split before scoring")
        proba = self._clf.predict_proba(self._features(inputs))
        return proba[:, list(self._clf.classes_).index(True)]
