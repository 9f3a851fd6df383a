"""Evaluate every baseline strategy on a held-out split from stored samples, and write the report.

Inputs are the `questions` and `samples` tables; nothing is generated here. Outputs, under one
directory: `records.parquet` (per query, per strategy), `curves.json`, `metrics.json` (the summary
table plus model accuracies by difficulty), PNG plots and `report.md`.
"""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from escalate.evaluation import curves, plots
from escalate.evaluation.cost import CostModel
from escalate.evaluation.records import LatencyModel, build_records, fit_latency_model
from escalate.evaluation.report import format_table, write_report
from escalate.routers import ROUTERS, Router, RouterInputs, make_router

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


@dataclass(frozen=True)
class EvalSettings:
    split: str
    delta: float
    n_points: int
    seed: int
    profile: str


def inputs_for(questions: pd.DataFrame, samples: pd.DataFrame, split: str) -> tuple[RouterInputs, pd.DataFrame]:
    """Router inputs (questions + SLM samples) and the LLM samples of one split."""
    q = questions[questions["split"] == split].reset_index(drop=True)
    s = samples[samples["id"].isin(q["id"])]
    return RouterInputs(q, s[s["model"] == "slm"]), s[s["model"] == "llm"]


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


def fitted_routers(calib: RouterInputs, seed: int, names: list[str] | None = None) -> dict[str, Router]:
    routers = {}
    for name in names or list(ROUTERS):
        router = make_router(name, seed=seed) if name == "random" else make_router(name)
        routers[name] = router.fit(calib)
    return routers


def calib_operating_point(
    router: Router,
    calib: RouterInputs,
    calib_llm: pd.DataFrame,
    cost: CostModel,
    latency: LatencyModel,
    settings: EvalSettings,
) -> dict[str, float]:
    """What the profile's objective picks on calib: the cheapest point within δ of LLM-only accuracy.

    Returns the threshold (inf when no point qualifies: escalate everything) and its calib figures,
    which rank candidates before the test split confirms them.
    """
    records = build_records(router, calib, calib_llm, cost, latency)
    a_llm = float(records["llm_correct"].mean())
    point = curves.metrics.operating_point(curves.sweep(records, router.mode, settings.n_points), a_llm, settings.delta)
    if point is None:
        return {"threshold": math.inf, "calib_accuracy": a_llm, "calib_cost": math.nan, "calib_llm_accuracy": a_llm}
    return {
        "threshold": float(point["threshold"]),
        "calib_accuracy": float(point["accuracy"]),
        "calib_cost": float(point["cost"]),
        "calib_llm_accuracy": a_llm,
    }


def evaluate(
    questions: pd.DataFrame,
    samples: pd.DataFrame,
    cost: CostModel,
    settings: EvalSettings,
    out_dir: Path,
    timings: pd.DataFrame,
    routers: list[str] | None = None,
) -> dict:
    """Run every strategy on `settings.split`, write records, curves, plots and the report; return metrics.

    `timings` are single-request latencies (sampling.measure_latency) that fit the deterministic
    latency model; batch-amortised sample latencies cannot separate prefill from decode.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    latency = fit_latency_model(timings)
    test, test_llm = inputs_for(questions, samples, settings.split)
    calib, calib_llm = inputs_for(questions, samples, "calib")
    fitted = fitted_routers(calib, settings.seed, routers)

    all_records, curve_map, rows = [], {}, []
    base = build_records(fitted.get("p_true_token") or make_router("p_true_token"), test, test_llm, cost, latency)
    refs = curves.reference_points(base)
    a_slm, a_llm = float(refs.at[curves.SLM_ONLY, "accuracy"]), float(refs.at[curves.LLM_ONLY, "accuracy"])
    (out_dir / "routers").mkdir(exist_ok=True)
    for name, router in fitted.items():
        # The fitted router ships inside the cascade bundle, so a registered cascade scores as evaluated.
        with (out_dir / "routers" / f"{name}.pkl").open("wb") as fh:
            pickle.dump(router, fh)
        records = build_records(router, test, test_llm, cost, latency)
        all_records.append(records.assign(strategy=name))
        curve_map[name] = curves.sweep(records, router.mode, settings.n_points)
        summary = curves.summarize(
            records,
            router.mode,
            a_slm=a_slm,
            a_llm=a_llm,
            delta=settings.delta,
            n_points=settings.n_points,
            is_probability=router.is_probability,
        )
        chosen = (
            calib_operating_point(router, calib, calib_llm, cost, latency, settings)
            if len(calib.questions)
            else {"threshold": math.inf}
        )
        at = curves.metrics.outcomes(records, router.mode, chosen["threshold"])
        rows.append(
            {
                "strategy": name,
                "mode": router.mode,
                **chosen,
                "accuracy": float(at["correct"].mean()),
                "cost": float(at["cost"].sum() / records["llm_cost"].sum()),
                "call_rate": float(at["escalated"].mean()),
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
    best = curves.summarize(
        oracle, "pregen", a_slm=a_slm, a_llm=a_llm, delta=settings.delta, n_points=settings.n_points
    )
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
        "latency_model": latency.coef,
    }
    (out_dir / "metrics.json").write_text(to_json(metrics))
    return metrics


READING_GUIDE = """\
- `accuracy`, `cost`, `call_rate`: the strategy at the threshold chosen on the calib split (the cheapest
  point within δ of LLM-only accuracy there), applied unchanged to this split.
- `apgr`, `cpt50`, `cpt80`, `togr`, `saving_at_iso_accuracy`: over the whole threshold sweep on this split.
- `agl_s`, `arol_s`: measured wall time at this split's own iso-accuracy operating point.
- Random is the analytic expectation of random mixing; oracle escalates exactly the SLM's mistakes."""


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
