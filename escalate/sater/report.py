"""SATER's measurement: what stage I shortened, what stage II refuses at each τ, and SATER's routing against
the vanilla SLM's cascades on the same test set.

Every routing figure comes from escalate.evaluation.run.evaluate (records, sweeps, calib thresholds),
run once on the vanilla SLM's samples (its P(T) cascade and self-consistency) and once on the
stage-II SLM's (refusal cascade, pre-generation refusal probability, confidence-weighted vote), with
the same LLM samples, cost model and latency model; this module gathers them into one table, checks
issue 4's targets and writes the report. AGL and AROL are taken at each strategy's cheapest point
with accuracy ≥ LLM-only − δ on the test split (METRICS.md), measured and modeled.
Run by `escalate sater train --profile tiny`, which writes artifacts/<profile>/sater/report.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from escalate.data.schema import is_refusal
from escalate.evaluation.report import markdown_table, target_verdicts, verdict_table, write_report

VANILLA = ("p_true_token", "self_consistency")  # the vanilla SLM's cascades issue 4 compares with
STRATEGIES = ("sater_refusal", "sater_pregen", "sater_vote")  # SATER's three ways of routing
SWEPT = ("sater_refusal", "sater_pregen")  # what the τ sweep evaluates per stage-II model (greedy samples suffice)
CASCADE, BASELINE = "sater_refusal", "p_true_token"  # the latency targets compare these two cascades
MAX_ACCURACY_DROP = 0.01  # METRICS.md: a token reduction is claimed only if accuracy fell by at most 1 point
TARGETS = {
    "token_reduction": ("stage I: 1 − tokens_after / tokens_before (greedy, test)", ">=", 0.40),
    "accuracy_drop": ("stage I: accuracy_before − accuracy_after", "<=", MAX_ACCURACY_DROP),
    "arol_cut": (f"1 − AROL({CASCADE}) / AROL(vanilla {BASELINE}), latency model", ">=", 0.80),
    "agl_cut": (f"1 − AGL({CASCADE}) / AGL(vanilla {BASELINE}), latency model", ">=", 0.50),
    "saving": ("best SATER strategy's cost saving at accuracy ≥ LLM-only − δ", ">=", 0.50),
}
ROUTING_COLUMNS = ("slm", "strategy", "mode", "accuracy", "cost", "call_rate", "slm_output_tokens", "agl_s",
                   "agl_model_s", "arol_s", "arol_model_s", "toa", "togr", "saving_at_iso_accuracy", "auroc")
SWEEP_COLUMNS = ("tau", "refusal_target_share", "refusal_rate", "accuracy_when_answering", "slm_accuracy",
                 "answered_tokens", "refusal_saving", "pregen_saving", "pregen_auroc")


def greedy(samples: pd.DataFrame, model: str, split: str) -> pd.DataFrame:
    """One model's greedy sample (sample_idx 0) per question of `split`."""
    rows = samples[(samples["model"] == model) & (samples["split"] == split) & (samples["sample_idx"] == 0)]
    if rows.empty:
        raise ValueError(f"no greedy samples of {model!r} on split {split!r}")
    return rows


def stage_one(vanilla: pd.DataFrame, stage1: pd.DataFrame) -> dict[str, Any]:
    """Mean output tokens and accuracy of the greedy answers before and after stage I (METRICS.md).

    The token reduction is claimed only where accuracy fell by at most MAX_ACCURACY_DROP.
    """
    tokens = float(vanilla["n_output_tokens"].mean()), float(stage1["n_output_tokens"].mean())
    accuracy = float(vanilla["correct"].mean()), float(stage1["correct"].mean())
    return {
        "n_questions": len(stage1), "tokens_before": tokens[0], "tokens_after": tokens[1],
        "accuracy_before": accuracy[0], "accuracy_after": accuracy[1],
        "token_reduction": 1 - tokens[1] / tokens[0],
        "token_reduction_claimed": accuracy[0] - accuracy[1] <= MAX_ACCURACY_DROP + 1e-12,
    }


def refusals(stage2: pd.DataFrame) -> dict[str, float]:
    """How often a stage-II model's greedy answer refuses, how right the rest are, and what its answers cost."""
    refused = stage2["text"].map(is_refusal).astype(bool)
    answered = stage2[~refused]
    return {
        "refusal_rate": float(refused.mean()),
        "accuracy_when_answering": float(answered["correct"].mean()) if len(answered) else math.nan,
        "slm_accuracy": float(stage2["correct"].mean()),  # refusals count as wrong
        "answered_tokens": float(answered["n_output_tokens"].mean()) if len(answered) else math.nan,
    }


def _row(evaluation: Mapping[str, Any], strategy: str) -> Mapping[str, Any]:
    return next(r for r in evaluation["summary"] if r["strategy"] == strategy)


def sweep_row(tau: float, target_share: float, stage2: pd.DataFrame, evaluation: Mapping[str, Any]) -> dict:
    """One τ of the sweep: its training targets, its greedy refusals on test, and its two cheap strategies."""
    refusal, pregen = _row(evaluation, "sater_refusal"), _row(evaluation, "sater_pregen")
    return {"tau": tau, "refusal_target_share": target_share, **refusals(stage2),
            "refusal_saving": refusal["saving_at_iso_accuracy"], "pregen_saving": pregen["saving_at_iso_accuracy"],
            "pregen_auroc": pregen["auroc"]}


def slm_tokens(samples: pd.DataFrame, split: str, all_samples: bool) -> float:
    """Mean SLM output tokens per query that a strategy generates when it keeps every query: the greedy
    answer, or all K samples for a vote."""
    rows = samples[samples["split"] == split]
    rows = rows if all_samples else rows[rows["sample_idx"] == 0]
    return float(rows.groupby("id")["n_output_tokens"].sum().mean())


def routing_rows(evaluations: Mapping[str, Mapping[str, Any]], tokens: Mapping[str, float]) -> list[dict]:
    """The comparison table: each evaluation's strategies (label -> evaluate() metrics), vanilla first."""
    rows = []
    for slm, evaluation in evaluations.items():
        for row in evaluation["summary"]:
            if row["strategy"] in (*VANILLA, *STRATEGIES):
                rows.append({"slm": slm, **{k: row.get(k) for k in ROUTING_COLUMNS if k != "slm"},
                             "slm_output_tokens": tokens[row["strategy"]]})
    return rows


def _cut(new: Any, old: Any) -> float:
    """1 − new / old, NaN where either is undefined (no operating point) or old is 0."""
    if new is None or old is None or not (math.isfinite(float(new)) and math.isfinite(float(old))) or old == 0:
        return math.nan
    return 1 - float(new) / float(old)


def check_targets(stage1: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Issue 4's targets from the stage-I figures and the routing table (NaN: not met)."""
    by = {r["strategy"]: r for r in rows}
    cascade, baseline = by[CASCADE], by[BASELINE]
    savings = [by[s]["saving_at_iso_accuracy"] for s in STRATEGIES if s in by]
    figures = {
        "token_reduction": stage1["token_reduction"] if stage1["token_reduction_claimed"] else math.nan,
        "accuracy_drop": stage1["accuracy_before"] - stage1["accuracy_after"],
        "arol_cut": _cut(cascade["arol_model_s"], baseline["arol_model_s"]),
        "agl_cut": _cut(cascade["agl_model_s"], baseline["agl_model_s"]),
        "saving": max((float(s) for s in savings if s is not None and math.isfinite(float(s))), default=math.nan),
    }
    return target_verdicts(figures, TARGETS)


def latency_cuts(rows: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Every SATER strategy's AGL and AROL cut against the vanilla P(T) cascade, measured and modeled."""
    by = {r["strategy"]: r for r in rows}
    base = by[BASELINE]
    return [{"strategy": s, **{f"{m}_cut{suffix}": _cut(by[s][f"{m}{suffix}"], base[f"{m}{suffix}"])
                               for m in ("agl", "arol") for suffix in ("_s", "_model_s")}}
            for s in STRATEGIES if s in by]


def write_sater_report(path: Path, *, context: Mapping[str, Any], stage1: Mapping[str, Any],
                       tokens_by_difficulty: Sequence[Mapping[str, Any]], sweep: Sequence[Mapping[str, Any]],
                       rows: Sequence[Mapping[str, Any]], targets: Mapping[str, Mapping[str, Any]],
                       training: Mapping[str, Mapping[str, Any]], plots: Mapping[str, str]) -> Path:
    """The Markdown report: routing table, targets, stage I, the τ sweep, latency cuts, training, plots."""
    labels = {"stage1": "stage I (DPO)", "stage2": f"stage II (refusal SFT, τ {context['tau']:g})"}
    runs = [{"stage": labels.get(name, name), "steps": s["steps"], "seconds": s["seconds"], "final loss": s["loss"],
             "examples": s["n_examples"]} for name, s in training.items()]
    claimed = "claimed" if stage1["token_reduction_claimed"] else "**not claimed**: accuracy fell by more than 1 point"
    return write_report(
        path,
        title=f"SATER vs the vanilla SLM's cascades: {context['profile']}",
        context=context,
        rows=rows,
        columns=ROUTING_COLUMNS,
        plots=plots,
        extra_sections={
            "Targets (issue 4)": verdict_table(targets),
            "Stage I: shortest-correct preference optimisation (greedy answers)": (
                f"Mean output tokens {stage1['tokens_before']:.1f} → {stage1['tokens_after']:.1f} "
                f"({-stage1['token_reduction']:+.1%}, reduction {claimed}); accuracy {stage1['accuracy_before']:.3f} → "
                f"{stage1['accuracy_after']:.3f}.\n\n" + markdown_table(tokens_by_difficulty)),
            "Stage II: the τ sweep (refuse where stage I's sampled accuracy p̂ < τ)": SWEEP_GUIDE + "\n\n"
            + markdown_table(sweep, SWEEP_COLUMNS),
            "Latency against the vanilla P(T) cascade": LATENCY_GUIDE + "\n\n" + markdown_table(latency_cuts(rows)),
            "Training": markdown_table(runs),
            "How to read this": READING_GUIDE,
        },
    )


def tokens_by_difficulty(questions: pd.DataFrame, before: pd.DataFrame, after: pd.DataFrame) -> list[dict]:
    """Greedy output tokens and accuracy per difficulty, before and after stage I."""
    rows = []
    for label, frame in (("vanilla", before), ("stage I", after)):
        merged = frame.merge(questions[["id", "difficulty"]], on="id")
        merged["difficulty"] = merged["difficulty"].fillna(-1).astype(int)
        for level, part in merged.groupby("difficulty"):
            rows.append({"slm": label, "difficulty": int(level), "n": len(part),
                         "tokens": float(part["n_output_tokens"].mean()), "accuracy": float(part["correct"].mean())})
    return rows


def plot_sweep(sweep: Sequence[Mapping[str, Any]], path: Path, *, profile: str, split: str) -> Path:
    """Refusal rate, accuracy when answering and the two savings against τ."""
    from escalate.evaluation.plots import plot_lines  # matplotlib: only when a plot is drawn

    labels = {"refusal_rate": "refusal rate", "accuracy_when_answering": "accuracy when answering",
              "refusal_saving": "refusal cascade: saving at iso-accuracy",
              "pregen_saving": "pre-generation: saving at iso-accuracy"}
    series = {label: [math.nan if r[key] is None else r[key] for r in sweep] for key, label in labels.items()}
    return plot_lines([r["tau"] for r in sweep], series, path, xlabel="τ (refuse where stage I's sampled accuracy p̂ < τ)",
                      ylabel="share", heading="SATER stage II: the τ sweep", profile=profile, split=split)


SWEEP_GUIDE = """\
Each τ trains its own stage-II model from the same stage-I checkpoint and train samples. `refusal_target_share`:
train questions whose target is the refusal; `refusal_rate`, `accuracy_when_answering`, `slm_accuracy`
(refusals wrong) and `answered_tokens`: its greedy answers on the test split; `refusal_saving`,
`pregen_saving`: the largest cost saving at accuracy ≥ LLM-only − δ of its refusal cascade and its
pre-generation router; `pregen_auroc`: how well 1 − P(refusal) ranks its correct answers."""

LATENCY_GUIDE = """\
Cuts in AGL (mean time to the final answer) and AROL (mean SLM time spent on queries the LLM ends up
answering), each strategy and the baseline at its own cheapest point within δ of LLM-only accuracy on
the test split; `_s` from the measured (batch-amortised) generation times, `_model_s` from the
deterministic latency model fitted on single-request timings. — where a strategy has no such point."""

READING_GUIDE = """\
- `slm`: whose samples the strategy routes on (`vanilla`: the zoo SLM; `sater`: the stage-II SLM at the
  profile's τ). `accuracy`, `cost`, `call_rate`: at the threshold fitted on calib, applied to the test split.
- `slm_output_tokens`: the SLM's mean output tokens per query when it keeps every query (K samples for a vote).
- `agl_*`, `arol_*`, `saving_at_iso_accuracy`: at the cheapest point of the test sweep within δ of LLM-only.
- `toa`, `togr`: tradeoff area and gain ratio (METRICS.md) over the whole sweep, against random mixing and
  the oracle of the same records.
- `sater_refusal`: the SLM answers or refuses, and a refusal escalates at once (its cost is the refusal's
  few tokens); `sater_pregen`: escalate before generating where P(the response starts with the refusal) is
  high, paying only that prefill; `sater_vote`: K samples vote, each weighted by its sequence probability,
  refusals against, and a low winning share escalates."""
