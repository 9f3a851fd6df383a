"""Threshold policies: how one router's scores on the calib split become its one threshold.

Every policy is a small pure function of the calib split's per-query outcomes (`Outcomes`: score,
SLM and LLM correctness, what each query costs kept or escalated) and returns a `Pick`, the
threshold and its calib figures; what a threshold escalates is evaluation/decision.py's rule, and the
test split then shows whether the pick transfers. Four policies, one per question a user asks:

- `by_budget`: "at most a fraction b of queries may reach the LLM": the largest calib call rate <= b.
- `by_accuracy`: "stay within δ of LLM-only accuracy": the cheapest calib point with A >= A_LLM − δ
  (the profile's objective; the point METRICS.md's saving at iso-accuracy reads).
- `cost_optimal`: "a wrong answer costs e LLM calls": the least cost + e · error rate on calib.
- `risk_controlled`: "lose at most ε accuracy against LLM-only, with probability >= 1 − α": the
  only one with a finite-sample guarantee; see its docstring.

The budget and accuracy policies are plug-in rules: on a small calib split they miss their target on
new data about as often as they meet it (tests/test_thresholds.py measures it). Sums over queries use
cumulative sums over the score order (decision.sweep), so a whole curve costs one sort: the sweeps, the
policies and their many-split tests stay cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import binom

from escalate.evaluation import decision

if TYPE_CHECKING:
    import pandas as pd

# Accuracies are ratios k/n; a target such as A_LLM − δ can land one rounding error above a point
# that meets it exactly, which must still count as meeting it.
TOL = 1e-9


def quantile_grid(scores: ArrayLike, n_points: int = 101, *, never: bool = False) -> np.ndarray:
    """Score quantiles at n_points evenly spaced levels (both ends), then +inf; with `never`, −inf first.

    The 0-quantile escalates nothing the router scores (escalation is score < threshold) and +inf
    escalates everything, so call rates 0 and 1 are on the curve. A strategy whose SLM refuses
    escalates the refusals it keeps at every finite threshold; only −inf keeps them (SLM-only,
    refusals served), so its grid starts there (`never`) to reach call rate 0.
    """
    if n_points < 2:
        raise ValueError(f"n_points must be >= 2 to include both endpoints, got {n_points}")
    grid = np.append(np.quantile(np.asarray(scores, dtype=float), np.linspace(0.0, 1.0, n_points)), np.inf)
    return np.insert(grid, 0, -np.inf) if never else grid


def meets_accuracy(accuracy: ArrayLike, a_llm: float, delta: float) -> np.ndarray:
    """Whether accuracy >= A_LLM − δ, up to rounding: the iso-accuracy target every figure uses."""
    return np.asarray(accuracy, float) >= a_llm - delta - TOL


def cheapest_meeting(accuracy: ArrayLike, cost: ArrayLike, a_llm: float, delta: float) -> int | None:
    """Index of the cheapest point with A >= A_LLM − δ (the first on ties), None if none."""
    eligible = np.flatnonzero(meets_accuracy(accuracy, a_llm, delta))
    if eligible.size == 0:
        return None
    return int(eligible[np.argmin(np.asarray(cost, float)[eligible])])


# Optional record column (evaluation.metrics): whether the strategy's kept SLM answer is the refusal
# (Router.slm_answers); records without it hold no refusals.
REFUSED_COLUMN = "slm_refused"


def refusals(records: pd.DataFrame) -> np.ndarray:
    """Per query, whether keeping it with the SLM gets the refusal, which then escalates anyway."""
    if REFUSED_COLUMN not in records:
        return np.zeros(len(records), dtype=bool)
    return records[REFUSED_COLUMN].to_numpy(bool)


@dataclass(frozen=True)
class Outcomes:
    """One strategy on one split, per query: its score, both models' correctness and costs.

    keep_cost is what query i costs when the threshold keeps it (router + SLM), escalate_cost what
    it costs when it goes to the LLM (router + LLM, plus the SLM attempt a cascade already paid),
    llm_cost what the LLM alone costs: Σ llm_cost normalizes, so LLM-only costs 1. `refused` marks
    the queries whose SLM answer is the refusal: a finite threshold that keeps one sends it to the
    LLM anyway (router + SLM + LLM, the LLM's answer); only −inf serves it.
    """

    scores: np.ndarray
    slm_correct: np.ndarray
    llm_correct: np.ndarray
    keep_cost: np.ndarray
    escalate_cost: np.ndarray
    llm_cost: np.ndarray
    refused: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.scores)
        arrays = (self.slm_correct, self.llm_correct, self.keep_cost, self.escalate_cost, self.llm_cost, self.refused)
        if n == 0 or any(len(a) != n for a in arrays):
            raise ValueError("outcomes must be non-empty arrays of one length")
        if not np.isfinite(np.asarray(self.scores, float)).all():
            raise ValueError("scores must be finite")
        if not self.llm_only_cost > 0:
            raise ValueError(f"LLM-only cost must be > 0 to normalize costs, got {self.llm_only_cost}")

    @classmethod
    def from_records(cls, records: pd.DataFrame, mode: str) -> Outcomes:
        """From evaluation.metrics records (a DataFrame with its RECORD_COLUMNS) of a `mode` strategy."""

        def col(name: str) -> np.ndarray:
            return records[name].to_numpy(float)

        keep_cost, escalate_cost = decision.prices(col("router_cost"), col("slm_cost"), col("llm_cost"), mode)
        return cls(scores=col("score"), slm_correct=col("slm_correct").astype(bool),
                   llm_correct=col("llm_correct").astype(bool), keep_cost=keep_cost, escalate_cost=escalate_cost,
                   llm_cost=col("llm_cost"), refused=refusals(records))

    def take(self, index: ArrayLike) -> Outcomes:
        """The outcomes of some queries (a boolean mask or positions), e.g. one dataset of a mixed split."""
        return Outcomes(*(np.asarray(getattr(self, f.name))[index] for f in fields(self)))

    @classmethod
    def concat(cls, parts: list[Outcomes]) -> Outcomes:
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)))

    @property
    def llm_only_cost(self) -> float:
        return float(np.sum(self.llm_cost))

    @property
    def a_llm(self) -> float:
        return float(np.mean(self.llm_correct))

    def grid(self, n_points: int = 101) -> np.ndarray:
        """The thresholds the policies choose from (quantile_grid, from −inf where the SLM refuses)."""
        return quantile_grid(self.scores, n_points, never=bool(np.any(self.refused)))

    def curve(self, grid: np.ndarray) -> dict[str, np.ndarray]:
        """call_rate, cost (normalized) and accuracy at each threshold of `grid`."""

        def figures(d: decision.Decision) -> np.ndarray:
            return np.column_stack([d.escalated, d.price(self.keep_cost, self.escalate_cost, self.llm_cost),
                                    d.answer(self.slm_correct, self.llm_correct)])

        n = len(self.scores)
        sums = decision.sweep(self.scores, grid, figures, self.refused)
        return {"threshold": np.asarray(grid, float), "call_rate": sums[:, 0] / n,
                "cost": sums[:, 1] / self.llm_only_cost, "accuracy": sums[:, 2] / n}

    def lost(self, d: decision.Decision) -> np.ndarray:
        """Per query under `d`, whether it loses an answer the LLM gets right (the risk's loss)."""
        return ~d.answer(self.slm_correct, self.llm_correct).astype(bool) & np.asarray(self.llm_correct, bool)


@dataclass(frozen=True)
class Pick:
    """A policy's threshold and the calib figures it was chosen by."""

    policy: str
    threshold: float
    call_rate: float
    cost: float
    accuracy: float


def _pick(policy: str, curve: dict[str, np.ndarray], i: int) -> Pick:
    return Pick(policy, *(float(curve[k][i]) for k in ("threshold", "call_rate", "cost", "accuracy")))


def by_budget(out: Outcomes, budget: float, n_points: int = 101) -> Pick:
    """The largest calib call rate <= budget (the lowest such threshold on ties).

    It reads only the scores: a budget is a quantile, so it can be refitted on unlabelled traffic.
    Escalating more never lowers expected accuracy for a router worth deploying, so the most the
    budget allows is the pick; a call rate of 0 always qualifies.
    """
    if not 0 <= budget <= 1:
        raise ValueError(f"budget must be in [0, 1], got {budget}")
    curve = out.curve(out.grid(n_points))
    within = np.flatnonzero(curve["call_rate"] <= budget + TOL)
    best = within[curve["call_rate"][within] == curve["call_rate"][within].max()]
    return _pick("budget", curve, int(best[0]))


def by_accuracy(out: Outcomes, delta: float, n_points: int = 101) -> Pick:
    """The cheapest calib point with accuracy >= A_LLM − δ (the first by threshold on ties).

    Escalating everything (+inf, on every grid) is LLM-only, so some point always qualifies.
    """
    if not 0 <= delta < 1:
        raise ValueError(f"delta must be in [0, 1), got {delta}")
    curve = out.curve(out.grid(n_points))
    return _pick("accuracy", curve, cheapest_meeting(curve["accuracy"], curve["cost"], out.a_llm, delta))


def cost_optimal(out: Outcomes, error_cost: float, n_points: int = 101) -> Pick:
    """The least normalized cost + error_cost · (1 − accuracy) on calib (the first on ties).

    error_cost prices one wrong answer in units of the mean LLM-only query cost, so it reads "a
    wrong answer costs as much as e LLM calls" whatever the profile's prices; 0 gives the cheapest
    point, a large value the most accurate one.
    """
    if not error_cost >= 0:
        raise ValueError(f"error_cost must be >= 0, got {error_cost}")
    curve = out.curve(out.grid(n_points))
    # The cost column, Σ cost / Σ llm_cost, is already the mean query cost in mean-LLM-query units.
    objective = curve["cost"] + error_cost * (1.0 - curve["accuracy"])
    return _pick("cost", curve, int(np.argmin(objective)))


def lost_answers(out: Outcomes) -> np.ndarray:
    """Per query, whether keeping it (any finite threshold at or below its score) loses an answer the LLM
    gets right: the SLM's mistakes, but not its refusals, which the LLM answers anyway."""
    return out.lost(decision.decide(out.scores, decision.KEEP_ALL, out.refused))


def risk_controlled(out: Outcomes, epsilon: float, alpha: float) -> Pick:
    """Learn-then-Test: accuracy loss against LLM-only <= ε with probability >= 1 − α over the calib draw.

    The loss of keeping query q with the SLM is 1 when the SLM is wrong and the LLM right, else 0;
    its risk R(t) = P(score >= t, SLM wrong, LLM right) bounds the accuracy loss A_LLM − A(t) from
    above (queries where the SLM is right and the LLM wrong only help). For each candidate t the
    null hypothesis "R(t) > ε" gets the exact binomial p-value P(Binomial(n, ε) <= k(t)), k(t) the
    calib losses: the loss is Bernoulli, so the binomial tail is the tightest valid p-value
    (Hoeffding–Bentkus would be needed for a general bounded loss, and loses power here).
    Candidates are tested in fixed sequence from +inf (escalate everything, R = 0) down through
    every calib score, stopping at the first that cannot be rejected at level α; the pick is the
    last rejected, i.e. the fewest escalations whose whole prefix passed.

    Why this and not conformal risk control: CRC bounds the expected risk over calib draws, not the
    probability of exceeding ε, which is what the guarantee asks. Why any candidate grid, even the
    calib scores, is valid: R(t) and k(t) only grow as t falls, so rejecting at some t with R(t) > ε
    means the one fixed test at t* = max{t : R(t) > ε} would reject too (k(t*) <= k(t)), and that
    test errs with probability <= α.
    Assumes calib and future queries are i.i.d. from one distribution; a shifted dataset breaks it.
    It is conservative by the queries only the SLM gets right, which the loss does not credit.
    """
    if not 0 < epsilon < 1:
        raise ValueError(f"epsilon must be in (0, 1), got {epsilon}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    grid = np.append(np.inf, np.unique(out.scores)[::-1])  # fixed sequence: most escalations first
    n = len(out.scores)
    losses = decision.sweep(out.scores, grid, out.lost, out.refused)
    rejected = binom.cdf(np.rint(losses).astype(int), n, epsilon) <= alpha
    rejected[0] = True  # +inf keeps nothing: its loss is 0 surely, no test needed
    last = int(np.argmin(rejected)) - 1 if not rejected.all() else len(grid) - 1
    return _pick("risk", out.curve(grid[[last]]), 0)


def balanced_mixture(groups: list[Outcomes], seed: int) -> Outcomes:
    """A calibration set with as many queries from each group (dataset, difficulty band) as the smallest has.

    Drawn without replacement, so no group dominates the fitted thresholds by being large: the
    mixture arXiv 2502.04428 builds to fit thresholds that transfer to a dataset it has not seen.
    """
    rng = np.random.default_rng(seed)
    size = min(len(g.scores) for g in groups)
    return Outcomes.concat([g.take(rng.choice(len(g.scores), size, replace=False)) for g in groups])


def realized(out: Outcomes, threshold: float) -> dict[str, float]:
    """The figures a threshold gives on another split (test): call rate, cost, accuracy, loss vs LLM-only."""
    curve = out.curve(np.array([threshold]))
    accuracy = float(curve["accuracy"][0])
    return {"call_rate": float(curve["call_rate"][0]), "cost": float(curve["cost"][0]), "accuracy": accuracy,
            "accuracy_loss": out.a_llm - accuracy}

