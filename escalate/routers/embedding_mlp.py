"""Embedding MLP: a small neural classifier, for interactions a linear model on embeddings misses."""

from __future__ import annotations

from sklearn.neural_network import MLPClassifier

from escalate.routers.embedding import EmbeddingRouter


class EmbeddingMLPRouter(EmbeddingRouter):
    name = "embedding_mlp"

    def _classifier(self, n_train: int) -> MLPClassifier:
        # Early stopping on a held-out tenth keeps a few hundred calib questions from being memorized.
        early = n_train >= 50
        return MLPClassifier(hidden_layer_sizes=(64,), alpha=1e-2, max_iter=300, early_stopping=early,
                             n_iter_no_change=10, random_state=self.seed)
