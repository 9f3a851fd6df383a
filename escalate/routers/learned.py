"""Pre-generation routers that learn from the question alone with a scikit-learn classifier.

Fitting reads the calib questions, the SLM's greedy correctness and, where the calib inputs carry
them, the LLM's; scoring reads only the question text, never a model's output, so the decision is
made before generating. What is learned (P(SLM right), P(escalating gains), or both) is the router's
`target` (escalate.routers.targets). A head whose calib labels have one class only yields that
class's constant probability.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np
from sklearn.base import ClassifierMixin
from threadpoolctl import threadpool_limits

from escalate.routers import targets
from escalate.routers.base import Router, RouterInputs

Head = ClassifierMixin | float  # a fitted classifier, or the constant probability of a one-class label


class ClassifierRouter(Router):
    """Features of the question text -> a classifier per head -> a score; subclasses choose both."""

    mode = "pregen"
    is_probability = True  # with the default target; a fitted router says for the target it chose
    top_logprobs_needed = 0  # the question text only
    seed = 0

    chosen: str | None = None  # the target fitted: `target`, or the one "auto" picked on calib
    target_areas: dict[str, float] | None = None  # "auto": each target's calib accuracy area
    _heads: dict[str, Head] | None = None

    def __init__(self, target: str = "slm_correct") -> None:
        self.target = targets.check_target(target)

    @abstractmethod
    def _features(self, inputs: RouterInputs) -> np.ndarray:
        """One feature row per question, from the question text only."""

    @abstractmethod
    def _classifier(self, n_train: int) -> ClassifierMixin:
        """A fresh, unfitted classifier for n_train calibration questions."""

    def _fit_head(self, features: np.ndarray | None, y: np.ndarray) -> Head:
        # A class seen once cannot appear in every inner training fold: its rate is all there is to learn.
        if features is None or min(y.sum(), (~y).sum()) < 2:
            return float(y.mean()) if len(y) else 0.5
        return self._classifier(len(y)).fit(features, y)

    @staticmethod
    def _predict(head: Head, features: np.ndarray | None, n: int) -> np.ndarray:
        if isinstance(head, float):
            return np.full(n, head)
        return head.predict_proba(features)[:, list(head.classes_).index(True)]

    def _fit_target(self, target: str, features: np.ndarray | None, slm: np.ndarray,
                    llm: np.ndarray | None) -> dict[str, Head]:
        return {head: self._fit_head(features, y) for head, y in targets.labels(slm, llm, target).items()}

    def _score_heads(self, target: str, heads: dict[str, Head], features: np.ndarray | None, n: int) -> np.ndarray:
        return targets.combine(target, {h: self._predict(head, features, n) for h, head in heads.items()})

    def fit(self, calib: RouterInputs) -> ClassifierRouter:
        slm, llm = calib.greedy()["correct"].to_numpy(bool), calib.llm_correct()
        target = self.target
        seen = [slm] if llm is None else [slm, llm, llm & ~slm]
        features = self._features(calib) if any(len(np.unique(y)) > 1 for y in seen) else None
        # Many small fits (inner grid searches): one BLAS thread each beats a thread pool's start-up.
        with threadpool_limits(1):
            if target == "auto":
                target = self._choose(features, slm, llm)
            self._heads = self._fit_target(target, features, slm, llm)
        self.chosen = target
        self.is_probability = target == "slm_correct"
        return self

    def _choose(self, features: np.ndarray | None, slm: np.ndarray, llm: np.ndarray | None) -> str:
        """auto: the target with the best out-of-fold calib accuracy area (targets.choose)."""
        splits = [] if llm is None or features is None else targets.inner_splits(slm, llm, self.seed)
        if not splits:
            return "slm_correct"

        def out_of_fold(target: str) -> np.ndarray:
            scores = np.empty(len(slm))
            for train, held in splits:
                heads = self._fit_target(target, features[train], slm[train], llm[train])
                scores[held] = self._score_heads(target, heads, features[held], len(held))
            return scores

        chosen, self.target_areas = targets.choose(out_of_fold, slm, llm)
        return chosen

    def score(self, inputs: RouterInputs) -> np.ndarray:
        if self._heads is None or self.chosen is None:
            raise RuntimeError(f"router {self.name!r} must be fitted on a calib split before scoring")
        n = inputs.n_questions
        learned = any(not isinstance(head, float) for head in self._heads.values())
        return self._score_heads(self.chosen, self._heads, self._features(inputs) if learned else None, n)
