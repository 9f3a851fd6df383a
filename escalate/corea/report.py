"""COREA's measurement: the base SLM, the warm-up, RLVR and COREA side by side, in and out of domain.

Each model's cascade is evaluated by escalate.evaluation.run.evaluate (records, sweep, calib
threshold, reliability diagram), so every figure here is one METRICS.md defines; this module only
says which questions form each domain, gathers the four evaluations into one table, checks issue
5's targets and writes the report. The base SLM states no confidence, so its row scores it by P(T),
the probability of its answer tokens: the best probability-like signal it has.
Run by `escalate corea train --profile tiny`, which writes artifacts/<profile>/corea/report.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from escalate.corea.confidence import confidence_counts, distinct_confidences
from escalate.evaluation.report import format_cell, markdown_table, target_verdicts, verdict_table, write_report

VARIANTS = ("warmup", "rlvr", "corea")  # the checkpoints the corea stage trains, in training order
MODELS = ("base", *VARIANTS)  # what the report compares; "base" is the vanilla SLM
ROUTER = {"base": "p_true_token", **dict.fromkeys(VARIANTS, "corea_confidence")}
TARGET_DOMAIN = "in_domain"
# Issues 5 and 15's targets, COREA against RLVR in-domain: (figure, comparison, limit). A stated confidence that
# takes one or two values ranks nothing, however low its ECE: hence the count of distinct values.
TARGETS = {
    "ece_reduction": ("1 − ECE_COREA / ECE_RLVR", ">=", 0.40),
    "auroc_gain": ("AUROC_COREA − AUROC_RLVR", ">=", 0.05),
    "accuracy_drop": ("accuracy_RLVR − accuracy_COREA", "<=", 0.01),
    "saving": ("COREA's cost saving at accuracy ≥ LLM-only − δ", ">=", 0.20),
    "distinct_confidences": ("distinct readable confidences COREA states (greedy)", ">=", 5),
}
COLUMNS = ("domain", "model", "confidence", "n", "accuracy", "ece", "brier", "auroc", "unreadable_rate",
           "saving_at_iso_accuracy", "cascade_accuracy", "cascade_cost", "call_rate", "threshold", "llm_accuracy",
           "slm_output_tokens", "distinct_confidences")


def domain_masks(questions: pd.DataFrame, ood_min_difficulty: int | None) -> dict[str, pd.Series]:
    """Which questions each domain holds: all of them, those RL trained on, and those held out.

    A question without a difficulty stays in-domain; with no hold-out every question is in-domain
    and "ood" is empty.
    """
    everything = pd.Series(True, questions.index)
    if ood_min_difficulty is None or "difficulty" not in questions:
        return {"all": everything, "in_domain": everything, "ood": ~everything}
    inside = questions["difficulty"].isna() | (questions["difficulty"] < ood_min_difficulty)
    return {"all": everything, "in_domain": inside, "ood": ~inside}


def eval_questions(questions: pd.DataFrame, masks: Mapping[str, pd.Series], domain: str, split: str) -> pd.DataFrame:
    """The domain's `split` questions, plus the calib questions its threshold is fitted on.

    Out of domain, the threshold is the in-domain one: a deployment has no calibration data for
    the questions it was not trained for, so the OOD figures test whether the threshold transfers.
    """
    fit_on = masks["all"] if domain == "all" else masks[TARGET_DOMAIN]
    keep = ((questions["split"] == split) & masks[domain]) | ((questions["split"] == "calib") & fit_on)
    return questions[keep].reset_index(drop=True)


def model_row(model: str, domain: str, evaluation: Mapping[str, Any], greedy: pd.DataFrame) -> dict[str, Any]:
    """One report row from evaluate()'s metrics of one model's cascade, and that model's greedy samples."""
    row = next(r for r in evaluation["summary"] if r["strategy"] == ROUTER[model])
    # the base SLM states no confidence: counting its unreadable ones would say nothing
    counts = confidence_counts(greedy["text"]) if model != "base" else dict.fromkeys(("unreadable_rate", "missing",
                                                                                       "malformed"))
    return {
        "domain": domain, "model": model, "confidence": "P(T)" if model == "base" else "stated",
        "n": evaluation["context"]["n"], "accuracy": evaluation["a_slm"],
        "ece": row["ece"], "brier": row["brier"], "auroc": row["auroc"],
        "unreadable_rate": counts["unreadable_rate"], "missing": counts["missing"], "malformed": counts["malformed"],
        "saving_at_iso_accuracy": row["saving_at_iso_accuracy"], "cascade_accuracy": row["accuracy"],
        "cascade_cost": row["cost"], "call_rate": row["call_rate"], "threshold": row["threshold"],
        "llm_accuracy": evaluation["a_llm"], "slm_output_tokens": float(greedy["n_output_tokens"].mean()),
        "distinct_confidences": None if model == "base" else distinct_confidences(greedy["text"]),
    }


def check_targets(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each target's figure, limit and verdict, from the in-domain RLVR and COREA rows (NaN: not met)."""
    def row(model: str) -> Mapping[str, Any]:
        return next(r for r in rows if r["model"] == model and r["domain"] == TARGET_DOMAIN)

    rlvr, corea = row("rlvr"), row("corea")
    figures = {
        "ece_reduction": 1 - corea["ece"] / rlvr["ece"] if rlvr["ece"] else math.nan,
        "auroc_gain": corea["auroc"] - rlvr["auroc"],
        "accuracy_drop": rlvr["accuracy"] - corea["accuracy"],
        "saving": corea["saving_at_iso_accuracy"],
        "distinct_confidences": corea.get("distinct_confidences"),
    }
    return target_verdicts(figures, TARGETS)


def write_corea_report(path: Path, *, context: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                       targets: Mapping[str, Mapping[str, Any]], training: Mapping[str, Mapping[str, Any]],
                       plots: Mapping[str, str]) -> Path:
    """The Markdown report: the side-by-side table, the targets with their verdicts, training, plots."""
    runs = [{"run": name, "steps": s["steps"], "seconds": s["seconds"], "final loss": s["loss"],
             **{f"final {k}": v[-1] for k, v in s.get("rewards", {}).items() if v}} for name, s in training.items()]
    ood = [r for r in rows if r["domain"] == "ood" and r["model"] == "corea"]
    return write_report(
        path,
        title=f"COREA vs RLVR: {context['profile']}",
        context=context,
        rows=rows,
        columns=COLUMNS,
        plots=plots,
        extra_sections={
            f"Targets (issue 5; {TARGET_DOMAIN}, COREA against RLVR)": verdict_table(targets),
            "Out of domain": (f"COREA's cost saving at accuracy ≥ LLM-only − δ on held-out difficulties: "
                              f"{format_cell(ood[0]['saving_at_iso_accuracy'])}; ECE {format_cell(ood[0]['ece'])}, "
                              f"AUROC {format_cell(ood[0]['auroc'])}." if ood else "No held-out difficulty."),
            "Training": markdown_table(runs),
            "How to read this": READING_GUIDE,
        },
    )


READING_GUIDE = """\
- `accuracy`: the SLM alone (greedy); `ece`, `brier`, `auroc`: its confidence against its correctness
  (stated confidence; P(T) for the base SLM, which states none).
- `unreadable_rate`: responses whose confidence was missing or malformed and read as 0 (they escalate).
- `saving_at_iso_accuracy`: the largest cost saving 1 − C over the threshold sweep on this split with
  cascade accuracy ≥ LLM-only − δ (METRICS.md); `cascade_*` and `call_rate`: at the threshold fitted on calib.
- Domains: `in_domain` holds the difficulties RL trained on, `ood` the held-out ones (threshold fitted
  in-domain), `all` both (threshold fitted on all of calib: the candidate cascade's figures)."""
