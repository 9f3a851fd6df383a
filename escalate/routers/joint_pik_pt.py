"""The joint P(IK)/P(T) rule of arXiv 2602.22090: escalate when either the probe's P(IK) or the
answer's P(T) is below its own threshold.

Two thresholds do not fit the one-threshold interface as they stand, so the score folds them into
one: score = min(P(IK) / r, P(T)), and score < τ  ⇔  P(T) < τ  or  P(IK) < r·τ. The threshold
policy picks τ (the P(T) threshold) and the router fits r on calib, so the P(IK) threshold is r·τ:
both are fitted on calib, and a threshold sweep moves along the line of pairs with that ratio.
r is the ratio whose joint rule ranks the calib queries best (AUROC against SLM correctness),
read from out-of-fold P(IK) on calib, since the probe's in-sample scores would look too sure.

A cascade: P(T) needs the SLM's answer, so the SLM attempt is paid on every query. A two-stage
deployment that asks P(IK) before generating would save the attempt on what P(IK) escalates; the
cascade accounting here does not credit that.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from escalate.routers.base import Router, RouterInputs
from escalate.routers.pik_probe import PIKProbeRouter
from escalate.routers.token_prob import TokenProbRouter

# Candidate P(IK):P(T) threshold ratios, from "P(T) alone decides" to "P(IK) alone decides".
RATIOS = tuple(np.geomspace(1 / 64, 64, 25))


def joint_score(pik: np.ndarray, pt: np.ndarray, ratio: float) -> np.ndarray:
    return np.minimum(np.asarray(pik, float) / ratio, np.asarray(pt, float))


def best_ratio(pik: np.ndarray, pt: np.ndarray, correct: np.ndarray) -> float:
    """The ratio whose joint score has the highest AUROC (the one nearest 1 on ties)."""
    if correct.all() or not correct.any():
        return 1.0
    aurocs = [roc_auc_score(correct, joint_score(pik, pt, r)) for r in RATIOS]
    best = max(aurocs)
    return min((r for r, a in zip(RATIOS, aurocs) if a == best), key=lambda r: abs(np.log(r)))


class JointPIKPTRouter(Router):
    """Score = min(P(IK) / r, P(T)): escalate when P(T) < τ or P(IK) < r·τ."""

    name = "joint_pik_pt"
    mode = "cascade"
    is_probability = False  # a minimum of rescaled probabilities, not P(SLM correct)
    top_logprobs_needed = 1  # P(T); the probe reads hidden states

    def __init__(self, model_dir: str, seed: int = 0, device: str = "auto") -> None:
        self.probe = PIKProbeRouter(model_dir, seed, device)
        self.p_true = TokenProbRouter()
        self.ratio = 1.0  # the P(IK):P(T) threshold ratio r, fitted on calib

    def fit(self, calib: RouterInputs) -> JointPIKPTRouter:
        self.probe.fit(calib)
        correct = calib.greedy()["correct"].to_numpy(bool)
        selection = self.probe.selection
        pik = selection.out_of_fold if selection is not None else self.probe.score(calib)
        self.ratio = best_ratio(pik, self.p_true.score(calib), correct)
        return self

    def bind_slm(self, checkpoint: str) -> None:
        self.probe.bind_slm(checkpoint)

    def score(self, inputs: RouterInputs) -> np.ndarray:
        return joint_score(self.probe.score(inputs), self.p_true.score(inputs), self.ratio)

    def slm_reads(self, inputs: RouterInputs) -> np.ndarray | None:
        """The probe's prefill: it reads the prompt in a pass of its own, beside the answer's generation."""
        return self.probe.slm_reads(inputs)
