"""The one escalation rule, and what it does to each query: every figure and the online cascade ask here.

A query escalates (the LLM answers it) when its score is below the threshold, or when the score kept
it but the SLM's answer is the refusal (SATER's SLM: nobody is served "I don't know"). Threshold −inf
is SLM-only: nothing escalates, a refusal included. A NaN score fails closed: the router could not
vouch for the SLM, so the LLM answers. What a query then spends depends on the mode: a cascade has
paid the SLM attempt before deciding; pre-generation routing pays the SLM only where the score kept
the query (a kept refusal pays it, then the LLM).

Arrays only (numpy, no pandas), so the offline sweeps, the threshold policies and the online cascade
(one request at a time, later the gateway) run the same lines: `metrics.outcomes`, `thresholds.Outcomes`
and `cascade.Cascade` never compare a score with a threshold themselves.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

MODES = ("cascade", "pregen")
# The lowest finite threshold: the score keeps every query with a finite score (a kept refusal still escalates).
KEEP_ALL = -np.finfo(float).max


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")


@dataclass(frozen=True)
class Decision:
    """Per query, under one threshold: whether the score sent it to the LLM, and whether the LLM answered.

    `routed` is decided before any SLM answer exists (pre-generation, the SLM never sees these
    queries); `escalated` adds the kept refusals, known only after the SLM answered.
    """

    routed: np.ndarray
    escalated: np.ndarray

    def answer(self, slm: ArrayLike, llm: ArrayLike) -> np.ndarray:
        """The answering model's value per query (its correctness, say): the LLM's where it escalated."""
        return np.where(self.escalated, llm, slm)

    def slm_paid(self, mode: str) -> np.ndarray:
        """Whether the SLM attempt was paid: always in a cascade; pre-generation, where the score kept the query."""
        check_mode(mode)
        return np.ones_like(self.routed) if mode == "cascade" else ~self.routed

    def wasted(self, mode: str) -> np.ndarray:
        """The SLM attempts paid for answers nobody was served (AROL's summand)."""
        return self.slm_paid(mode) & self.escalated

    def price(self, keep: ArrayLike, escalate: ArrayLike, llm: ArrayLike) -> np.ndarray:
        """What each query spends, from what it spends kept and routed (`prices`) and the LLM's part:
        a kept refusal pays keeping, then the LLM."""
        kept = np.asarray(keep, float) + (self.escalated & ~self.routed) * np.asarray(llm, float)
        return np.where(self.routed, escalate, kept)

    def spend(self, router: ArrayLike, slm: ArrayLike, llm: ArrayLike, mode: str) -> np.ndarray:
        """One quantity (cost, seconds) per query from its router, SLM-attempt and LLM parts, in `mode`."""
        return self.price(*prices(router, slm, llm, mode), llm)


def prices(router: ArrayLike, slm: ArrayLike, llm: ArrayLike, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(kept, routed): what a query spends when the score keeps it (router + SLM) and when it sends it to the
    LLM (router + LLM, plus the SLM attempt a cascade has already paid)."""
    check_mode(mode)
    router, slm, llm = (np.asarray(a, float) for a in (router, slm, llm))
    return router + slm, router + llm + (slm if mode == "cascade" else 0.0)


def decide(scores: ArrayLike, threshold: float, refused: ArrayLike | None = None) -> Decision:
    """The rule: route score < threshold (NaN scores too), then escalate the kept refusals; −inf does neither.

    `refused` marks the queries whose SLM answer is the refusal; None before the SLM has answered
    (what the routing alone decides) or where the SLM never refuses.
    """
    scores = np.asarray(scores, float)
    if threshold == -math.inf:  # SLM-only: even a refusal is served
        nothing = np.zeros(scores.shape, bool)
        return Decision(nothing, nothing)
    routed = ~(scores >= threshold)  # not "<": a NaN score (or threshold) escalates
    return Decision(routed, routed if refused is None else routed | np.asarray(refused, bool))


def escalates(scores: ArrayLike, threshold: float, refused: ArrayLike | None = None) -> np.ndarray:
    """Per query, whether the LLM answers it (decide's `escalated`)."""
    return decide(scores, threshold, refused).escalated


def sweep(scores: ArrayLike, grid: ArrayLike, figures: Callable[[Decision], ArrayLike],
          refused: ArrayLike | None = None) -> np.ndarray:
    """Σ over queries of `figures(decision)` at each threshold of `grid` (rows), for a whole curve in one sort.

    A query's figures depend on the threshold only through its Decision, which has three values:
    SLM-only (−inf), kept by the score (any finite threshold at or below it) and routed (above it).
    So `figures` is evaluated at those three, and at a threshold t the routed queries are a prefix of
    the score order (score < t), which turns every threshold's sum into cumulative sums. `figures`
    returns one value or one row of values per query. Scores must be finite: a NaN has no place in
    the order (`decide` escalates it; records and Outcomes refuse it).
    """
    scores = np.asarray(scores, float)
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite to sweep thresholds")
    grid = np.asarray(grid, float)
    never, kept, routed = (np.asarray(figures(decide(scores, t, refused)), float) for t in (-math.inf, KEEP_ALL, math.inf))
    order = np.argsort(scores, kind="stable")
    n_routed = np.searchsorted(scores[order], grid, side="left")  # how many scores are < t: decide's routed
    zero = np.zeros((1, *kept.shape[1:]))
    cum_kept = np.concatenate([zero, np.cumsum(kept[order], axis=0)])
    cum_routed = np.concatenate([zero, np.cumsum(routed[order], axis=0)])
    sums = cum_routed[n_routed] + (cum_kept[-1] - cum_kept[n_routed])
    sums[np.isneginf(grid)] = never.sum(axis=0)
    return sums
