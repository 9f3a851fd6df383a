"""RouteLLM's matrix-factorization router (arXiv 2406.18665), for this project's two models.

A prompt's embedding is projected to `dim` dimensions (W, no bias), multiplied elementwise with each
model's learned, L2-normalized embedding, and a linear map (v, no bias) reads off the model's
strength on that prompt: s_m(q) = v · (p̂_m ⊙ W q). Trained as RouteLLM trains it, on pairwise
wins only: a row is a battle the LLM wins (LLM right, SLM wrong) or the SLM wins (SLM right, LLM
wrong); ties, both right or both wrong, are dropped, as RouteLLM drops them. The loss is the
logistic loss of s_winner − s_loser, with Gaussian noise (alpha) on the prompt embedding, Adam,
weight decay, and RouteLLM's settings (dim 128, batch 64, 100 epochs, lr 3e-4, alpha 0.1). The
embedding is this project's MiniLM (RouteLLM used OpenAI's text-embedding-3-small).

Score = P(SLM wins) = sigmoid(s_slm − s_llm): a low score escalates. Without the LLM's correctness on
calib every prompt is a battle the SLM wins when right and loses when wrong (with the LLM taken to be
right everywhere no battle would be won by the SLM, and nothing could be learned). Fitting is
deterministic for a seed; the state is the three arrays.
"""

from __future__ import annotations

import numpy as np

from escalate.routers.base import Router, RouterInputs
from escalate.routers.embedding import get_encoder

SLM, LLM = 0, 1


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class MatrixFactorizationRouter(Router):
    name = "matrix_factorization"
    mode = "pregen"
    is_probability = False  # P(SLM beats the LLM) among decisive prompts, not P(SLM correct)

    projection: np.ndarray | None = None  # W: (dim, embedding size)
    models: np.ndarray | None = None  # P: (2, dim), rows SLM and LLM
    readout: np.ndarray | None = None  # v: (dim,)
    _constant: float | None = None

    def __init__(self, model_path: str | None = None, seed: int = 0, dim: int = 128, epochs: int = 100,
                 batch_size: int = 64, lr: float = 3e-4, weight_decay: float = 1e-5, alpha: float = 0.1) -> None:
        self.model_path = model_path
        self.seed = seed
        self.dim, self.epochs, self.batch_size = dim, epochs, batch_size
        self.lr, self.weight_decay, self.alpha = lr, weight_decay, alpha

    def _embed(self, inputs: RouterInputs) -> np.ndarray:
        return get_encoder(self.model_path).encode(inputs.question_texts())

    def fit(self, calib: RouterInputs) -> MatrixFactorizationRouter:
        slm = calib.greedy()["correct"].to_numpy(bool)
        llm = calib.llm_correct()
        llm = ~slm if llm is None else llm
        decisive = slm != llm
        llm_wins = llm[decisive]
        if min(llm_wins.sum(), (~llm_wins).sum()) < 1:  # one side never wins: no pairwise signal to learn
            self._constant = float(1.0 - llm_wins.mean()) if len(llm_wins) else 0.5
            self.projection = self.models = self.readout = None
            return self
        x = self._embed(calib)[decisive]
        self.projection, self.models, self.readout = self._train(x, llm_wins)
        self._constant = None
        return self

    def _train(self, x: np.ndarray, llm_wins: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import torch  # heavy, and only for training: scoring is numpy

        gen = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # the layers' initialization
            proj = torch.nn.Linear(x.shape[1], self.dim, bias=False)
            models = torch.nn.Embedding(2, self.dim)
            readout = torch.nn.Linear(self.dim, 1, bias=False)
        params = [*proj.parameters(), *models.parameters(), *readout.parameters()]
        optimizer = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        q = torch.from_numpy(np.ascontiguousarray(x, np.float32))
        # Each battle as RouteLLM feeds it: (winner, loser), target 1.
        winner = torch.from_numpy(np.where(llm_wins, LLM, SLM)).long()
        loser = 1 - winner
        for _ in range(self.epochs):
            for batch in torch.randperm(len(q), generator=gen).split(self.batch_size):
                noisy = q[batch] + torch.randn(q[batch].shape, generator=gen) * self.alpha
                emb = torch.nn.functional.normalize(models.weight, dim=1)
                logit = readout((emb[winner[batch]] - emb[loser[batch]]) * proj(noisy)).squeeze(1)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, torch.ones_like(logit))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return (proj.weight.detach().numpy().copy(), models.weight.detach().numpy().copy(),
                readout.weight.detach().numpy()[0].copy())

    def score(self, inputs: RouterInputs) -> np.ndarray:
        if self._constant is not None:
            return np.full(inputs.n_questions, self._constant)
        if self.projection is None or self.models is None or self.readout is None:
            raise RuntimeError(f"router {self.name!r} must be fitted on a calib split before scoring")
        emb = self.models / np.linalg.norm(self.models, axis=1, keepdims=True)
        projected = self._embed(inputs) @ self.projection.T
        return _sigmoid(projected @ ((emb[SLM] - emb[LLM]) * self.readout))
