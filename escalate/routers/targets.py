"""What a learned router learns to predict, and how the calib split chooses it.

Every score keeps a query with the SLM when high and escalates it when low. The targets:

- `slm_correct`: P(SLM right). It escalates the queries the SLM fails, including those the LLM
  fails too, where escalating buys nothing.
- `gain`: P(LLM right and SLM wrong), the only queries escalating helps; score = 1 − P(gain).
- `both`: two heads, P(SLM right) and P(LLM right); score = (1 + P_S − P_L) / 2. P_L − P_S is exactly
  the accuracy escalating a query is expected to add (E[L − S], by linearity, whatever the two
  models' correlation), so it also counts the queries escalating loses (SLM right, LLM wrong), which
  `gain` ignores, and each head learns from every row, where `gain`'s positives are a minority.
- `auto`: each of the three fitted on inner folds of calib; the one whose out-of-fold scores give
  the largest calib area under accuracy vs call rate (APGR's ranking) is refitted on all of calib.
  Nothing of the split being scored is read. Without the LLM's correctness it is `slm_correct`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.model_selection import StratifiedKFold

TARGETS = ("slm_correct", "gain", "both")
CHOICES = (*TARGETS, "auto")
HEADS = {"slm_correct": ("slm",), "gain": ("gain",), "both": ("slm", "llm")}


def check_target(target: str) -> str:
    if target not in CHOICES:
        raise ValueError(f"unknown router target {target!r}; choose from {', '.join(CHOICES)}")
    return target


def labels(slm: np.ndarray, llm: np.ndarray | None, target: str) -> dict[str, np.ndarray]:
    """Each head's label for `target`; a target other than slm_correct needs the LLM's correctness."""
    if target != "slm_correct" and llm is None:
        raise ValueError(f"router target {target!r} needs the LLM's correctness on calib, which these inputs lack")
    every = {"slm": slm, "llm": llm, "gain": None if llm is None else llm & ~slm}
    return {head: np.asarray(every[head], bool) for head in HEADS[target]}


def combine(target: str, probs: dict[str, np.ndarray]) -> np.ndarray:
    """The heads' probabilities as one score: high keeps with the SLM."""
    if target == "slm_correct":
        return probs["slm"]
    if target == "gain":
        return 1.0 - probs["gain"]
    return (1.0 + probs["slm"] - probs["llm"]) / 2.0


def accuracy_area(scores: np.ndarray, slm: np.ndarray, llm: np.ndarray) -> float:
    """Area under accuracy vs call rate when the lowest scores escalate first (ties in random order).

    Its ranking of routers on one split is APGR's ((area − A_SLM) / (A_LLM − A_SLM)), and it stays
    defined when both models are equally accurate.
    """
    n = len(scores)
    order = np.argsort(scores, kind="stable")
    s, gain = np.asarray(slm, float)[order], (np.asarray(llm, float) - np.asarray(slm, float))[order]
    sorted_scores = np.asarray(scores, float)[order]
    # Only the ends of runs of tied scores: within a run every order is as likely, so the curve is linear there.
    ends = np.append(np.flatnonzero(np.diff(sorted_scores) != 0) + 1, n)
    k = np.insert(ends, 0, 0)
    accuracy = (s.sum() + np.insert(np.cumsum(gain), 0, 0.0)[k]) / n
    rate = k / n
    return float(np.sum((rate[1:] - rate[:-1]) * (accuracy[1:] + accuracy[:-1]) / 2))


def inner_splits(slm: np.ndarray, llm: np.ndarray, seed: int, max_folds: int = 5) -> list[tuple[np.ndarray, ...]]:
    """Calib folds stratified by the rarest label (gain); none when it has fewer than 2 of a class."""
    gain = llm & ~slm
    folds = min(max_folds, int(gain.sum()), int((~gain).sum()), int(slm.sum()), int((~slm).sum()))
    if folds < 2:
        return []
    return list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(len(slm)), gain))


def choose(out_of_fold: Callable[[str], np.ndarray], slm: np.ndarray, llm: np.ndarray) -> tuple[str, dict[str, float]]:
    """The target whose out-of-fold calib scores have the largest accuracy area (the first on ties), and each area."""
    areas = {target: accuracy_area(out_of_fold(target), slm, llm) for target in TARGETS}
    return max(areas, key=lambda t: areas[t]), areas
