"""Embedding kNN: the share of a prompt's nearest calibration prompts that the SLM got right."""

from __future__ import annotations

from sklearn.neighbors import KNeighborsClassifier

from escalate.routers.embedding import EmbeddingRouter


class EmbeddingKNNRouter(EmbeddingRouter):
    name = "embedding_knn"

    def __init__(self, model_path: str | None = None, seed: int = 0, k: int = 32, target: str = "slm_correct") -> None:
        super().__init__(model_path, seed, target)
        self.k = k

    def _classifier(self, n_train: int) -> KNeighborsClassifier:
        # Embeddings are unit vectors, so Euclidean neighbours are cosine neighbours.
        return KNeighborsClassifier(n_neighbors=min(self.k, n_train))
