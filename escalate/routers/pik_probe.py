"""P(IK), "I know": a probe on the SLM's own hidden states that predicts, before it answers, whether
it will be right (arXiv 2602.22090's P(IK)).

The SLM reads the prompt once (prefill only, no generation) and a logistic regression on one layer's
hidden state gives P(SLM correct). Which layer, how the prompt's tokens are pooled (the last token,
or the mean over all of them) and the regularization are chosen by AUROC on held-out folds of the
calib split, then the probe is refitted on all of calib. It decides before generating, so it is a
pre-generation router, and the prefill it costs is priced and timed as SLM input (`slm_reads`).

The probe needs the SLM checkpoint (`model_dir`, which the evaluation stage passes); the checkpoint
is loaded once per process and each distinct prompt is read once (escalate.routers.memo), as for the embedding routers. A
saved probe (escalate.routers.state) holds the path and the fitted regression, not the weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from escalate.prompts import format_prompt
from escalate.routers.base import Router, RouterInputs
from escalate.routers.memo import TextMemo

POOLINGS = ("last", "mean")
C_GRID = (0.01, 0.1, 1.0)


class HiddenStates:
    """Prompt -> hidden states of every layer (embeddings first), pooled both ways: (poolings, layers + 1, hidden)."""

    def __init__(self, model_dir: str, device: str = "auto", batch_size: int = 32) -> None:
        from escalate.models.backends.hf import shared_backend  # torch: only when a probe runs

        # The backend's prompt encoding (bos token or chat template) is what sampling fed the SLM.
        self.backend = shared_backend(model_dir, device)
        self._memo = TextMemo(self._forward, batch_size)

    def pooled(self, prompts: Sequence[str]) -> np.ndarray:
        return np.stack(self._memo(prompts))

    def _forward(self, prompts: list[str]) -> np.ndarray:
        import torch  # loaded already: shared_backend (in __init__) brought it

        from escalate.models.backends.hf import left_padded  # torch, as above

        encoded = [self.backend.encode_prompt(p) for p in prompts]
        ids, mask, positions = left_padded(encoded, self.backend.tokenizer.pad_token_id, self.backend.device)
        with torch.inference_mode():
            out = self.backend.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                     output_hidden_states=True)
        states = torch.stack(out.hidden_states, dim=1).float()  # (batch, layers + 1, tokens, hidden)
        weights = mask[:, None, :, None].float()
        mean = (states * weights).sum(2) / weights.sum(2)
        return torch.stack([states[:, :, -1], mean], dim=1).cpu().numpy()  # left padding: last = prompt's end


@cache
def get_hidden_states(model_dir: str, device: str = "auto") -> HiddenStates:
    """The process-wide hidden-state reader of one checkpoint."""
    return HiddenStates(model_dir, device)


def prompts_of(inputs: RouterInputs) -> list[str]:
    """The prompts the SLM was given, built exactly as sampling built them."""
    q = inputs.questions
    choices = q["choices"] if "choices" in q else [None] * len(q)
    return [format_prompt(str(text), c if isinstance(c, str) else None) for text, c in zip(q["question"], choices)]


@dataclass(frozen=True)
class Selection:
    """The probe's chosen layer, pooling and C, their held-out AUROC, and out-of-fold calib scores."""

    pooling: str
    layer: int
    c: float
    auroc: float
    out_of_fold: np.ndarray


def _probe(c: float) -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))


def select(features: np.ndarray, correct: np.ndarray, seed: int) -> Selection:
    """Every (pooling, layer, C) scored by out-of-fold AUROC on calib; the best wins (the earliest on ties).

    features: (questions, poolings, layers + 1, hidden); both classes must occur at least twice.
    """
    folds = min(5, int(correct.sum()), int((~correct).sum()))
    splits = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(features, correct))
    candidates = []
    # Hundreds of small fits: one BLAS thread each is several times faster than a pool on a busy machine.
    with threadpool_limits(1):
        for p, pooling in enumerate(POOLINGS):
            for layer in range(features.shape[2]):
                x = features[:, p, layer]
                for c in C_GRID:
                    oof = np.empty(len(correct))
                    for train, held in splits:
                        oof[held] = _probe(c).fit(x[train], correct[train]).predict_proba(x[held])[:, 1]
                    candidates.append(Selection(pooling, layer, c, float(roc_auc_score(correct, oof)), oof))
    return max(candidates, key=lambda s: s.auroc)  # max keeps the first of equals


class PIKProbeRouter(Router):
    """Score = P(SLM correct) from a logistic regression on one layer of the SLM's prompt hidden states."""

    name = "pik_probe"
    mode = "pregen"
    is_probability = True
    top_logprobs_needed = 0  # the prompt's hidden states, not the answer's log-probabilities

    selection: Selection | None = None
    _clf: Pipeline | None = None
    _constant: float | None = None

    def __init__(self, model_dir: str, seed: int = 0, device: str = "auto") -> None:
        self.model_dir = model_dir
        self.seed = seed
        self.device = device

    def bind_slm(self, checkpoint: str) -> None:
        self.model_dir = checkpoint

    def features(self, inputs: RouterInputs) -> np.ndarray:
        """(questions, poolings, layers + 1, hidden) prompt hidden states."""
        return get_hidden_states(self.model_dir, self.device).pooled(prompts_of(inputs))

    def slm_reads(self, inputs: RouterInputs) -> np.ndarray | None:
        """The prompt tokens the SLM reads (none when the probe fell back to a constant and reads nothing)."""
        if self._constant is not None:
            return None
        backend = get_hidden_states(self.model_dir, self.device).backend
        return np.array([len(backend.encode_prompt(p)) for p in prompts_of(inputs)], dtype=float)

    def fit(self, calib: RouterInputs) -> PIKProbeRouter:
        y = calib.greedy()["correct"].to_numpy(bool)
        if min(y.sum(), (~y).sum()) < 2:  # too few of one class to hold any out: its rate is all we know
            self.selection, self._clf, self._constant = None, None, float(y.mean()) if len(y) else 0.5
            return self
        features = self.features(calib)
        self.selection = select(features, y, self.seed)
        x = features[:, POOLINGS.index(self.selection.pooling), self.selection.layer]
        self._clf, self._constant = _probe(self.selection.c).fit(x, y), None
        return self

    def score(self, inputs: RouterInputs) -> np.ndarray:
        if self._constant is not None:
            return np.full(inputs.n_questions, self._constant)
        if self._clf is None or self.selection is None:
            raise RuntimeError(f"router {self.name!r} must be fitted on a calib split before scoring")
        x = self.features(inputs)[:, POOLINGS.index(self.selection.pooling), self.selection.layer]
        return self._clf.predict_proba(x)[:, 1]
