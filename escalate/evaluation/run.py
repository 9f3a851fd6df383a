"""Evaluate every baseline strategy on a held-out split from stored samples, and write the report.

Inputs are the `questions` and `samples` tables; nothing is generated here. Outputs, under one
directory: `records.parquet` (per query, per strategy), `curves.json`, `metrics.json` (the summary
table, model accuracies by difficulty, every threshold policy's calib pick and its test figures, the
uncertainty benchmark per dataset and difficulty band, and threshold transfer to held-out datasets), the
fitted routers, PNG plots and `report.md`.
"""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from escalate.evaluation import curves, decision, plots, thresholds
from escalate.evaluation.cost import CostModel
from escalate.evaluation.records import build_records, fit_latency_model
from escalate.evaluation.report import format_table, markdown_table, write_report
from escalate.routers.base import Router, RouterInputs
from escalate.routers.registry import ROUTERS, make_router
from escalate.routers.state import save_router

SUMMARY_COLUMNS = (
    "strategy",
    "mode",
    "accuracy",
    "cost",
    "call_rate",
    "apgr",
    "cpt50",
    "cpt80",
    "togr",
    "saving_at_iso_accuracy",
    "auroc",
    "ece",
    "agl_s",
    "arol_s",
)
POLICY_COLUMNS = ("strategy", "policy", "target", "threshold", "calib_call_rate", "calib_accuracy", "call_rate",
                  "accuracy", "cost", "accuracy_loss", "met")
BENCHMARK_COLUMNS = ("task", "band", "strategy", "n", "slm_accuracy", "auroc", "ece", "apgr", "togr")
TRANSFER_COLUMNS = ("strategy", "policy", "calibration", "datasets", "call_rate", "accuracy_loss", "met")


@dataclass(frozen=True)
class EvalSettings:
    split: str
    delta: float
    n_points: int
    seed: int
    profile: str
    # The other threshold policies' targets (thresholds.py); `delta` is the objective's.
    budget: float = 0.5
    error_cost: float = 10.0
    risk_epsilon: float = 0.05
    risk_alpha: float = 0.1


def inputs_for(questions: pd.DataFrame, samples: pd.DataFrame, split: str) -> tuple[RouterInputs, pd.DataFrame]:
    """Router inputs (questions + SLM samples) and the LLM samples of one split."""
    q = questions[questions["split"] == split].reset_index(drop=True)
    s = samples[samples["id"].isin(q["id"])]
    llm = s[s["model"] == "llm"]
    return RouterInputs(q, s[s["model"] == "slm"], llm), llm


def accuracy_by_difficulty(questions: pd.DataFrame, samples: pd.DataFrame, split: str) -> list[dict]:
    """Greedy accuracy of each model per difficulty level (and overall) on one split."""
    greedy = samples[(samples["sample_idx"] == 0) & (samples["split"] == split)]
    merged = greedy.merge(questions[["id", "difficulty"]], on="id")
    merged["difficulty"] = merged["difficulty"].fillna(-1).astype(int)
    table = merged.pivot_table(index="difficulty", columns="model", values="correct", aggfunc="mean")
    rows = [{"difficulty": int(d), **{m: float(table.at[d, m]) for m in table.columns}} for d in table.index]
    overall = merged.groupby("model")["correct"].mean()
    rows.append({"difficulty": "all", **{m: float(v) for m, v in overall.items()}})
    counts = merged[merged["model"] == "slm"].groupby("difficulty").size()
    for row in rows:
        row["n"] = int(counts.get(row["difficulty"], counts.sum()) if row["difficulty"] != "all" else counts.sum())
    return rows


def _constructor_args(name: str) -> dict[str, inspect.Parameter]:
    return {k: p for k, p in inspect.signature(ROUTERS[name]).parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def required_args(name: str) -> list[str]:
    """What router `name` cannot be built without (the hidden-state probes need the SLM checkpoint)."""
    return [k for k, p in _constructor_args(name).items() if p.default is p.empty]


def build_router(name: str, **available: object) -> Router:
    """Router `name`, given those of `available` (seed, model_dir, ...) its constructor takes.

    One call site serves every router: the random and embedding routers take the seed, the hidden-
    state probes the SLM checkpoint. A required argument that is not available is named.
    """
    missing = [k for k in required_args(name) if available.get(k) is None]
    if missing:
        raise ValueError(f"router {name!r} needs {', '.join(missing)}, which this evaluation was not given")
    params = _constructor_args(name)
    return make_router(name, **{k: v for k, v in available.items() if k in params and v is not None})


def fitted_routers(calib: RouterInputs, seed: int, names: list[str] | None = None,
                   model_dir: str | None = None) -> dict[str, Router]:
    return {name: build_router(name, seed=seed, model_dir=model_dir).fit(calib) for name in names or list(ROUTERS)}


def calib_picks(records: pd.DataFrame, mode: str, settings: EvalSettings) -> dict[str, thresholds.Pick]:
    """Every threshold policy's pick on one strategy's calib records; "accuracy" is the profile's objective."""
    out = thresholds.Outcomes.from_records(records, mode)
    return {
        "accuracy": thresholds.by_accuracy(out, settings.delta, settings.n_points),
        "budget": thresholds.by_budget(out, settings.budget, settings.n_points),
        "cost": thresholds.cost_optimal(out, settings.error_cost, settings.n_points),
        "risk": thresholds.risk_controlled(out, settings.risk_epsilon, settings.risk_alpha),
    }


def accept_accuracy(records: pd.DataFrame, threshold: float) -> float:
    """P(SLM right | kept) at `threshold`: what the gateway's shadow labels measure live (NaN: nothing kept)."""
    kept = ~decision.escalates(records["score"].to_numpy(float), threshold, thresholds.refusals(records))
    return float(records["slm_correct"].to_numpy(bool)[kept].mean()) if kept.any() else math.nan


def policy_rows(strategy: str, picks: dict[str, thresholds.Pick], test: thresholds.Outcomes,
                settings: EvalSettings) -> list[dict]:
    """Each policy's calib pick applied unchanged to the test split, and whether test meets its target.

    The cost-optimal policy has an objective, not a target, so `met` is undefined for it.
    """
    targets = {
        "accuracy": f"accuracy >= LLM-only - {settings.delta:g}",
        "budget": f"call rate <= {settings.budget:g}",
        "cost": f"least cost + {settings.error_cost:g} x error rate",
        "risk": f"accuracy loss <= {settings.risk_epsilon:g} w.p. >= {1 - settings.risk_alpha:g}",
    }
    rows = []
    for policy, pick in picks.items():
        figures = thresholds.realized(test, pick.threshold)
        met = {
            "accuracy": figures["accuracy_loss"] <= settings.delta + thresholds.TOL,
            "budget": figures["call_rate"] <= settings.budget + thresholds.TOL,
            "risk": figures["accuracy_loss"] <= settings.risk_epsilon + thresholds.TOL,
        }.get(policy)
        rows.append({"strategy": strategy, "policy": policy, "target": targets[policy], "threshold": pick.threshold,
                     "calib_call_rate": pick.call_rate, "calib_accuracy": pick.accuracy, **figures, "met": met})
    return rows


def bands(questions: pd.DataFrame, ids: pd.Series) -> dict[tuple[str, str], pd.Series]:
    """The ids of each dataset (task) as a whole and of each of its difficulty levels, among `ids`."""
    meta = questions.set_index("id").loc[ids, ["task", "difficulty"]]
    out: dict[tuple[str, str], pd.Series] = {}
    for task, part in meta.groupby("task", sort=True):
        out[(str(task), "all")] = pd.Series(part.index)
        for level, level_part in part.dropna(subset=["difficulty"]).groupby("difficulty", sort=True):
            out[(str(task), str(int(level)))] = pd.Series(level_part.index)
    return out


def uncertainty_benchmark(records: dict[str, pd.DataFrame], routers: dict[str, Router], base: pd.DataFrame,
                          questions: pd.DataFrame, settings: EvalSettings) -> list[dict]:
    """Every strategy on every dataset and difficulty band: AUROC, ECE, APGR, ToGR (arXiv 2502.04428's table).

    Each band's APGR is measured against that band's own SLM-only and LLM-only accuracies (the
    greedy base records), so a band where the SLM is nearly always right says so instead of
    borrowing the whole split's gap.
    """
    rows = []
    for (task, band), ids in bands(questions, base["id"]).items():
        ref = base[base["id"].isin(ids)]
        a_slm, a_llm = float(ref["slm_correct"].mean()), float(ref["llm_correct"].mean())
        for name, router in routers.items():
            part = records[name][records[name]["id"].isin(ids)]
            summary = curves.summarize(part, router.mode, a_slm=a_slm, a_llm=a_llm, delta=settings.delta,
                                       n_points=settings.n_points, is_probability=router.is_probability)
            rows.append({"task": task, "band": band, "strategy": name, "n": len(part), "slm_accuracy": a_slm,
                         **{k: summary[k] for k in ("auroc", "ece", "apgr", "togr")}})
    return rows


def transfer_groups(questions: pd.DataFrame, ids: pd.Series) -> dict[str, pd.Series]:
    """The finest datasets threshold transfer holds out: each task's difficulty levels, or the task if it has none."""
    by_band = bands(questions, ids)
    graded = {task for task, band in by_band if band != "all"}
    return {f"{task}/{band}": part for (task, band), part in by_band.items() if band != "all" or task not in graded}


def threshold_transfer(strategy: str, mode: str, calib: pd.DataFrame, test: pd.DataFrame, questions: pd.DataFrame,
                       settings: EvalSettings) -> list[dict]:
    """Thresholds fitted without a dataset, applied to it: do the call rate and accuracy targets still hold?

    Each dataset (transfer_groups) is held out in turn, and the budget and accuracy policies fit
    their threshold on: its own calib queries ("in-domain", the reference); a balanced mixture of
    every other dataset's calib queries ("constructed", arXiv 2502.04428's calibration set); or one
    other dataset's alone ("single source", every choice). The held-out dataset's test queries then
    give the realized call rate and accuracy loss; `met` is the share of held-out cases meeting the
    target. Empty when fewer than two datasets have both calib and test queries.
    """
    calib_groups, test_groups = transfer_groups(questions, calib["id"]), transfer_groups(questions, test["id"])
    names = [g for g in test_groups if g in calib_groups]
    if len(names) < 2:
        return []
    cal = {g: thresholds.Outcomes.from_records(calib[calib["id"].isin(calib_groups[g])], mode) for g in names}
    tst = {g: thresholds.Outcomes.from_records(test[test["id"].isin(test_groups[g])], mode) for g in names}
    policies = {
        "budget": (lambda o: thresholds.by_budget(o, settings.budget, settings.n_points),
                   lambda f: f["call_rate"] <= settings.budget + thresholds.TOL),
        "accuracy": (lambda o: thresholds.by_accuracy(o, settings.delta, settings.n_points),
                     lambda f: f["accuracy_loss"] <= settings.delta + thresholds.TOL),
    }
    rows = []
    for policy, (fit, meets) in policies.items():
        outcomes: dict[str, list[dict]] = {"in-domain": [], "constructed": [], "single source": []}
        for target in names:
            others = [cal[g] for g in names if g != target]
            sources = {"in-domain": [cal[target]], "constructed": [thresholds.balanced_mixture(others, settings.seed)],
                       "single source": others}
            for calibration, fitted_on in sources.items():
                outcomes[calibration] += [thresholds.realized(tst[target], fit(o).threshold) for o in fitted_on]
        for calibration, figures in outcomes.items():
            rows.append({"strategy": strategy, "policy": policy, "calibration": calibration, "datasets": len(names),
                         "call_rate": float(np.mean([f["call_rate"] for f in figures])),
                         "accuracy_loss": float(np.mean([f["accuracy_loss"] for f in figures])),
                         "met": float(np.mean([meets(f) for f in figures]))})
    return rows


def evaluate(
    questions: pd.DataFrame,
    samples: pd.DataFrame,
    cost: CostModel,
    settings: EvalSettings,
    out_dir: Path,
    timings: pd.DataFrame,
    routers: list[str] | None = None,
    *,
    model_dir: str | None = None,
) -> dict:
    """Run every strategy on `settings.split`, write records, curves, plots and the report; return metrics.

    `timings` are single-request latencies (sampling.measure_latency) that fit the deterministic
    latency model; batch-amortised sample latencies cannot separate prefill from decode.
    `model_dir` is the SLM checkpoint, for routers that read its hidden states (the P(IK) probe).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    latency = fit_latency_model(timings)
    test, test_llm = inputs_for(questions, samples, settings.split)
    calib, calib_llm = inputs_for(questions, samples, "calib")
    fitted = fitted_routers(calib, settings.seed, routers, model_dir)

    all_records, curve_map, rows, policies, transfer, by_strategy = [], {}, [], [], [], {}
    base = build_records(fitted.get("p_true_token") or make_router("p_true_token"), test, test_llm, cost, latency)
    refs = curves.reference_points(base)
    a_slm, a_llm = float(refs.at[curves.SLM_ONLY, "accuracy"]), float(refs.at[curves.LLM_ONLY, "accuracy"])
    (out_dir / "routers").mkdir(exist_ok=True)
    for name, router in fitted.items():
        # The fitted router ships inside the cascade bundle, so a registered cascade scores as evaluated.
        save_router(router, out_dir / "routers" / name)
        records = build_records(router, test, test_llm, cost, latency)
        by_strategy[name] = records
        all_records.append(records.assign(strategy=name))
        # One curve per strategy: the plots draw the curve the summary row's figures are read from.
        curve_map[name] = curves.sweep(records, router.mode, settings.n_points)
        summary = curves.summarize(
            records,
            router.mode,
            a_slm=a_slm,
            a_llm=a_llm,
            delta=settings.delta,
            n_points=settings.n_points,
            is_probability=router.is_probability,
            curve=curve_map[name],
        )
        chosen: dict[str, float] = {"threshold": math.inf}
        if len(calib.questions):
            calib_records = build_records(router, calib, calib_llm, cost, latency)
            picks = calib_picks(calib_records, router.mode, settings)
            policies += policy_rows(name, picks, thresholds.Outcomes.from_records(records, router.mode), settings)
            transfer += threshold_transfer(name, router.mode, calib_records, records, questions, settings)
            objective = picks["accuracy"]
            chosen = {"threshold": objective.threshold, "calib_accuracy": objective.accuracy,
                      "calib_cost": objective.cost, "calib_llm_accuracy": float(calib_records["llm_correct"].mean()),
                      "calib_call_rate": objective.call_rate,
                      "calib_accept_accuracy": accept_accuracy(calib_records, objective.threshold)}
        at = thresholds.realized(thresholds.Outcomes.from_records(records, router.mode), chosen["threshold"])
        rows.append(
            {
                "strategy": name,
                "mode": router.mode,
                **chosen,
                "accuracy": at["accuracy"],
                "cost": at["cost"],
                "call_rate": at["call_rate"],
                **summary,
            }
        )
        if router.is_probability:
            plots.plot_reliability(
                records["score"],
                records["slm_correct"],
                out_dir / f"reliability_{name}.png",
                title=f"Reliability: {name} ({settings.profile}, {settings.split})",
            )
    oracle = curves.oracle_records(base)
    curve_map["oracle"] = curves.sweep(oracle, "pregen", settings.n_points)
    for ref, acc_col in ((curves.SLM_ONLY, "accuracy"), (curves.LLM_ONLY, "accuracy")):
        rows.append(
            {
                "strategy": ref,
                "mode": "-",
                "accuracy": float(refs.at[ref, acc_col]),
                "cost": float(refs.at[ref, "cost"]),
                "call_rate": 1.0 if ref == curves.LLM_ONLY else 0.0,
                "agl_s": float(refs.at[ref, "agl_s"]),
                "arol_s": 0.0,
            }
        )
    best = curves.summarize(oracle, "pregen", a_slm=a_slm, a_llm=a_llm, delta=settings.delta, n_points=settings.n_points,
                            curve=curve_map["oracle"])
    rows.append(
        {
            "strategy": "oracle",
            "mode": "pregen",
            **best,
            "accuracy": best["op_accuracy"],
            "cost": best["op_cost"],
            "call_rate": best["op_call_rate"],
        }
    )

    pd.concat(all_records).to_parquet(out_dir / "records.parquet", index=False)
    (out_dir / "curves.json").write_text(to_json({k: v.to_dict(orient="list") for k, v in curve_map.items()}))
    png = {
        "Accuracy vs cost": plots.plot_accuracy_vs_cost(
            curve_map,
            refs,
            out_dir / "accuracy_vs_cost.png",
            profile=settings.profile,
            split=settings.split,
            cost_model=cost.describe(),
        ),
        "Accuracy vs LLM call rate": plots.plot_accuracy_vs_call_rate(
            curve_map, refs, out_dir / "accuracy_vs_call_rate.png", profile=settings.profile, split=settings.split
        ),
    }
    png.update(
        {f"Reliability: {p.stem.removeprefix('reliability_')}": p for p in sorted(out_dir.glob("reliability_*.png"))}
    )
    by_difficulty = accuracy_by_difficulty(questions, samples, settings.split)
    benchmark = uncertainty_benchmark(by_strategy, fitted, base, questions, settings)
    context = {
        "profile": settings.profile,
        "split": settings.split,
        "cost_model": cost.describe(),
        "seed": settings.seed,
        "n": len(test.questions),
        "delta": settings.delta,
    }
    write_report(
        out_dir / "report.md",
        title=f"escalate evaluation: {settings.profile}",
        context=context,
        rows=rows,
        columns=list(SUMMARY_COLUMNS) + ["threshold"],
        plots={k: Path(v).name for k, v in png.items()},
        extra_sections={
            "Accuracy by difficulty (greedy)": "```\n" + format_table(by_difficulty) + "\n```",
            "Threshold policies (fitted on calib, applied to this split)": POLICY_GUIDE
            + "\n\n" + markdown_table(policies, POLICY_COLUMNS),
            "Uncertainty benchmark (by dataset and difficulty band)": BENCHMARK_GUIDE
            + "\n\n" + markdown_table(benchmark, BENCHMARK_COLUMNS),
            "Threshold transfer (to a dataset not seen when fitting)": TRANSFER_GUIDE + "\n\n"
            + (markdown_table(transfer, TRANSFER_COLUMNS) if transfer else "Fewer than two datasets: nothing to transfer."),
            "Latency model": "\n".join(
                f"- {m}: {p * 1e3:.3f} ms/prompt token, {d * 1e3:.3f} ms/output token"
                for m, (p, d) in latency.coef.items()
            ),
            "How to read this": READING_GUIDE,
        },
    )
    metrics = {
        "context": context,
        "a_slm": a_slm,
        "a_llm": a_llm,
        "summary": rows,
        "accuracy_by_difficulty": by_difficulty,
        "threshold_policies": policies,
        "uncertainty_benchmark": benchmark,
        "threshold_transfer": transfer,
        "latency_model": latency.coef,
    }
    (out_dir / "metrics.json").write_text(to_json(metrics))
    return metrics


READING_GUIDE = """\
- `accuracy`, `cost`, `call_rate`: the strategy at the threshold chosen on the calib split (the cheapest
  point within δ of LLM-only accuracy there), applied unchanged to this split.
- `apgr`, `cpt50`, `cpt80`, `togr`, `saving_at_iso_accuracy`: over the whole threshold sweep on this split.
- `agl_s`, `arol_s`: measured wall time at this split's own iso-accuracy operating point.
- Random is the analytic expectation of random mixing; oracle escalates exactly the SLM's mistakes.
- Threshold policies: every strategy's threshold fitted on calib by each policy (evaluation/thresholds.py)
  and what it gives here; `met` says whether this split meets the policy's target.
- Uncertainty benchmark: the same figures per dataset and difficulty band, each band against its own
  SLM-only and LLM-only accuracies."""

POLICY_GUIDE = """\
`accuracy` is the profile's objective (the threshold in the summary). `budget` and `accuracy` are plug-in
rules: on a finite calib split they miss their target on new data about as often as they meet it.
`risk` is Learn-then-Test with an exact binomial test: with probability at least 1 − α over the calib
draw, its accuracy loss against LLM-only stays within ε on data from the same distribution.
`cost` minimizes cost plus the price of an error (in LLM calls) and has no target."""

TRANSFER_GUIDE = """\
Each dataset (a task's difficulty level) is held out in turn; the budget and accuracy policies fit their
threshold on its own calib queries (`in-domain`), on a balanced mixture of the other datasets' calib
queries (`constructed`, as arXiv 2502.04428 builds its calibration set) or on one other dataset alone
(`single source`). `call_rate` and `accuracy_loss` (vs LLM-only) are means over the held-out cases on
their test queries; `met` is the share of cases meeting the policy's target. Only the threshold is
refitted: a learned router (embedding, probe) was fitted on all of calib, the held-out dataset included."""

BENCHMARK_GUIDE = """\
After arXiv 2502.04428: how well each strategy's score tracks SLM correctness (AUROC, ECE where the score
is a probability) and what that buys when routing (APGR, ToGR), per dataset and difficulty band."""


def to_json(value: object) -> str:
    """Strict JSON: numpy scalars unwrapped, NaN and infinities (undefined figures) as null."""
    return json.dumps(_plain(value), indent=2, allow_nan=False)


def _plain(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
