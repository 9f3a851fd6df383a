"""Fit each strategy's threshold on a calibration source, apply it unchanged to a shifted target, score the result.

Three kinds of source per target (issue 17 item 2, after arXiv 2502.04428):
- `constructed`: a balanced mixture of the constructed set's parts, the target's own shift left out
  (leave-one-shift-out), so the threshold never saw the distribution it is tested on;
- `calib`: the profile's original calib split;
- `single`: each other shifted set alone.
The threshold is the profile's objective (thresholds.by_accuracy: the cheapest source point within δ of
the source's LLM-only accuracy); the target's labels are read only to score it, with the same iso-accuracy
check (thresholds.meets_accuracy) and the same cost figures (thresholds.realized) the evaluation uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from escalate.evaluation import thresholds
from escalate.evaluation.thresholds import Outcomes

KINDS = ("constructed", "calib", "single")


@dataclass(frozen=True)
class Source:
    """One calibration source for one target: its kind, a name, the sets it was drawn from, its outcomes."""

    kind: str
    name: str
    fitted_on: tuple[str, ...]
    outcomes: Outcomes


def sources_for(target: str, constructed: dict[str, Outcomes], calib: Outcomes, shifted: dict[str, Outcomes],
                seed: int) -> list[Source]:
    """Every source a threshold for `target` may be fitted on; none holds `target`'s shift.

    `constructed` maps each part of the constructed set (base and every shift) to its outcomes;
    `shifted` maps each shifted set (the targets) to theirs.
    """
    parts = {name: out for name, out in constructed.items() if name != target}
    if not parts:
        raise ValueError(f"the constructed set has no part besides {target!r}: add another shift")
    sources = [Source("constructed", "constructed", tuple(sorted(parts)),
                      thresholds.balanced_mixture(list(parts.values()), seed)),
               Source("calib", "calib", ("calib",), calib)]
    sources += [Source("single", name, (name,), out) for name, out in shifted.items() if name != target]
    return sources


def meets(target: Outcomes, threshold: float, delta: float) -> tuple[dict[str, float], bool]:
    """The threshold's figures on `target` (thresholds.realized) and whether A >= A_LLM − δ held there."""
    figures = thresholds.realized(target, threshold)
    return figures, bool(thresholds.meets_accuracy(figures["accuracy"], target.a_llm, delta))


def apply_threshold(target: Outcomes, threshold: float, delta: float) -> dict[str, float | bool]:
    """A threshold fitted elsewhere, on the target: call rate, accuracy, saving and whether A >= A_LLM − δ held.

    `trivial` marks a target where never escalating (−inf) meets it too: the SLM is within δ of the LLM
    there, so meeting it says nothing about the threshold.
    """
    figures, met = meets(target, threshold, delta)
    return {"call_rate": figures["call_rate"], "accuracy": figures["accuracy"], "llm_accuracy": target.a_llm,
            "saving": 1.0 - figures["cost"], "met": met, "trivial": meets(target, -np.inf, delta)[1]}


def transfer_rows(strategy: str, constructed: dict[str, Outcomes], calib: Outcomes, shifted: dict[str, Outcomes],
                  delta: float, n_points: int, seed: int) -> list[dict]:
    """One row per (target, source): the threshold fitted on the source and what it gives on the target."""
    rows = []
    for target, target_out in shifted.items():
        for source in sources_for(target, constructed, calib, shifted, seed):
            pick = thresholds.by_accuracy(source.outcomes, delta, n_points)
            rows.append({"strategy": strategy, "target": target, "kind": source.kind, "source": source.name,
                         "fitted_on": list(source.fitted_on), "threshold": pick.threshold,
                         **apply_threshold(target_out, pick.threshold, delta)})
    return rows


def _rate(rows: list[dict]) -> float:
    return float(np.mean([r["met"] for r in rows])) if rows else float("nan")


def success_rates(rows: list[dict], by: tuple[str, ...] = ("kind",)) -> list[dict]:
    """Per group (by default per source kind): cases, share meeting the accuracy target, mean saving, and the
    same share over the informative cases alone (targets where never escalating misses it)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in by), []).append(row)
    order = {kind: i for i, kind in enumerate(KINDS)}
    keys = sorted(groups, key=lambda key: tuple(order.get(v, len(order)) if k == "kind" else str(v)
                                                for k, v in zip(by, key)))
    return [{**dict(zip(by, key)), "cases": len(groups[key]), "success_rate": _rate(groups[key]),
             "mean_saving": float(np.mean([r["saving"] for r in groups[key]])),
             "informative_cases": sum(not r["trivial"] for r in groups[key]),
             "informative_success_rate": _rate([r for r in groups[key] if not r["trivial"]])} for key in keys]


def flat(outcomes: Outcomes) -> bool:
    """Whether a score takes one value: no threshold falls between two queries, so it keeps or escalates all."""
    return np.unique(np.asarray(outcomes.scores, float)).size < 2


def ranking_rows(rows: list[dict], flat_strategies: set[str]) -> list[dict]:
    """The transfer rows of the strategies that rank. A flat score's threshold keeps every query or escalates
    every one, and escalating all meets any accuracy target by paying the LLM everywhere: counting it would
    read as transfer that is not."""
    return [r for r in rows if r["strategy"] not in flat_strategies]


def per_target(rows: list[dict]) -> dict[tuple[str, str], dict[str, float]]:
    """Per (strategy, target): each kind's share of sources meeting the target and their mean saving."""
    table: dict[tuple[str, str], dict[str, float]] = {}
    for summary in success_rates(rows, ("strategy", "target", "kind")):
        cell = table.setdefault((summary["strategy"], summary["target"]), {})
        cell[f"{summary['kind']}_met"] = summary["success_rate"]
        cell[f"{summary['kind']}_saving"] = summary["mean_saving"]
    return table
