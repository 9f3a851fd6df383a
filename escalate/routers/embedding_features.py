"""Embedding + difficulty features: what a question is about, and how much work it asks for.

A plain embedding router sees the topic but barely the amount of work: two questions about eggs
embed alike whether they take one step or five. This router puts counts that make word problems
hard (numbers, distinct numbers, sentences, percentages, fractions, decimals, rates, multipliers,
time units, size of the largest number, length) beside the MiniLM embedding, reduced by PCA so
its 384 dimensions do not drown the counts. The PCA size and C are chosen by AUROC on inner folds
of the calib split, as embedding_lr chooses C.
"""

from __future__ import annotations

import math
import re

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from escalate.routers.base import RouterInputs
from escalate.routers.embedding import EmbeddingRouter

NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")
PATTERNS = tuple(re.compile(p, re.IGNORECASE) for p in (
    r"\b(?:half|twice|double|triple|third|quarter|one|two|three|four|five|six|seven|eight|nine|ten|eleven|"
    r"twelve|hundred|thousand|dozen)\b",  # numbers in words
    r"%|\bpercent",
    r"\d\s*/\s*\d",  # fractions
    r"\d\.\d",  # decimals
    r"\$",
    r"\b(?:each|per|every)\b",  # rates
    r"\b(?:more|less|fewer|than)\b",  # comparisons
    r"\b(?:times|twice|half|double)\b",  # multipliers
    r"\b(?:hours?|minutes?|days?|weeks?|months?|years?)\b",  # time units
))
N_FEATURES = 5 + len(PATTERNS)
PCA_SIZES = (4, 8, 16, 32)
C_GRID = (0.003, 0.01, 0.03, 0.1)


def difficulty_features(text: str) -> list[float]:
    """Counts that grow with the work a word problem asks for (N_FEATURES of them)."""
    numbers = NUMBER.findall(text)
    largest = max((float(n.replace(",", "")) for n in numbers), default=0.0)
    sentences = len(re.findall(r"[.?!](?:\s|$)", text)) or 1
    return [math.log1p(len(text)), float(len(numbers)), float(len(set(numbers))), float(sentences),
            math.log1p(largest), *(float(len(p.findall(text))) for p in PATTERNS)]


class EmbeddingFeaturesRouter(EmbeddingRouter):
    name = "embedding_features"

    def _features(self, inputs: RouterInputs) -> np.ndarray:
        counts = np.array([difficulty_features(t) for t in inputs.question_texts()], dtype=np.float32)
        return np.hstack([super()._features(inputs), counts.reshape(-1, N_FEATURES)])

    def _classifier(self, n_train: int) -> GridSearchCV:
        folds = 3 if n_train < 100 else 5
        # PCA cannot keep more components than an inner training fold has questions.
        sizes = [k for k in PCA_SIZES if k < n_train * (folds - 1) // folds] or [1]
        columns = ColumnTransformer([
            ("embedding", make_pipeline(PCA(sizes[0], random_state=self.seed), StandardScaler()),
             slice(0, -N_FEATURES)),
            ("counts", StandardScaler(), slice(-N_FEATURES, None)),
        ])
        model = make_pipeline(columns, LogisticRegression(max_iter=3000))
        grid = {"columntransformer__embedding__pca__n_components": sizes, "logisticregression__C": list(C_GRID)}
        inner = StratifiedKFold(n_splits=folds, shuffle=True, random_state=self.seed)
        return GridSearchCV(model, grid, cv=inner, scoring="roc_auc")
