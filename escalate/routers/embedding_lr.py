"""Embedding + logistic regression (RouteLLM's cheap baseline), its C chosen on inner calib folds."""

from __future__ import annotations

from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from escalate.routers.embedding import EmbeddingRouter

# Standardized features: unit-norm embeddings have tiny per-dimension scales, which would make
# any fixed C grid mean something different for every encoder.
C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


class EmbeddingLRRouter(EmbeddingRouter):
    name = "embedding_lr"

    def _classifier(self, n_train: int) -> GridSearchCV:
        # C is picked by AUROC on folds of the calib split only, so nothing is tuned on the
        # questions the router later scores.
        inner = StratifiedKFold(n_splits=3 if n_train < 100 else 5, shuffle=True, random_state=self.seed)
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
        return GridSearchCV(model, {"logisticregression__C": list(C_GRID)}, cv=inner, scoring="roc_auc")
