"""`escalate calibrate`: sample the sets, score every strategy on each, transfer thresholds, write the report.

Writes artifacts/<profile>/calibration/: questions.parquet (every constructed and shifted question),
samples.parquet, metrics.json (the benchmark, every transfer case, the success rates) and report.md.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from escalate.calibration import transfer
from escalate.calibration.construct import (
    CONSTRUCTED,
    TARGET,
    CalibrateSettings,
    add_statements,
    build_sets,
    calib_split,
    sample_sets,
    zoo_dir,
)
from escalate.calibration.verbalized import STATEMENT, VERBALIZED, VerbalizedConfidenceRouter, statement_counts
from escalate.config import Profile
from escalate.evaluation import curves
from escalate.evaluation.records import build_records, fit_latency_model
from escalate.evaluation.report import format_table, markdown_table
from escalate.evaluation.run import build_router, inputs_for, to_json
from escalate.evaluation.thresholds import Outcomes
from escalate.routers.base import Router
from escalate.stages.base import cost_model, eval_settings

BENCHMARK_COLUMNS = ("strategy", "target", "n", "slm_accuracy", "llm_accuracy", "trivial", "auroc", "ece", "apgr",
                     "constructed_met", "constructed_saving", "calib_met", "calib_saving", "single_met",
                     "single_saving")
RATE_COLUMNS = ("kind", "cases", "success_rate", "mean_saving", "informative_cases", "informative_success_rate")
STATEMENT_COLUMNS = ("set", "n", "ok", "missing", "malformed", "unreadable_rate", "distinct")


def strategy_router(name: str, seed: int) -> Router:
    """A strategy's router: the registry's, or the base SLM's verbalized confidence this benchmark adds."""
    return VerbalizedConfidenceRouter() if name == VERBALIZED else build_router(name, seed=seed)


def calibrate(profile: Profile, settings: CalibrateSettings, root: Path | str = ".") -> dict:
    """The whole command; returns the metrics it wrote."""
    zoo_dir(profile, root)  # before any set is built: a missing zoo fails in a second, naming the fix
    ev = eval_settings(profile)
    out = profile.artifacts(root) / "calibration"
    out.mkdir(parents=True, exist_ok=True)
    calib_q, calib_s = calib_split(profile, root, settings.seed)
    sets = build_sets(profile, settings)
    questions = pd.concat(sets.values(), ignore_index=True)
    samples = sample_sets(profile, questions, root, settings.seed)
    sets["calib"] = calib_q
    all_samples = pd.concat([samples, calib_s], ignore_index=True)
    if VERBALIZED in settings.strategies:
        all_samples = add_statements(profile, pd.concat([questions, calib_q], ignore_index=True), all_samples, root)
    questions.to_parquet(out / "questions.parquet", index=False)
    all_samples[all_samples["id"].isin(questions["id"])].to_parquet(out / "samples.parquet", index=False)
    # Batch-amortised sample timings: enough for the records' latency columns, which no figure here reads.
    cost, latency = cost_model(profile, root), fit_latency_model(all_samples)
    set_inputs = {name: inputs_for(q, all_samples, q["split"].iloc[0]) for name, q in sets.items()}  # one split a set

    rows, benchmark, flat = [], [], set()
    for name in settings.strategies:
        router = strategy_router(name, settings.seed).fit(set_inputs["calib"][0])
        records = {set_name: build_records(router, *pair, cost, latency) for set_name, pair in set_inputs.items()}
        outcomes = {set_name: Outcomes.from_records(r, router.mode) for set_name, r in records.items()}
        constructed = {p: outcomes[f"{CONSTRUCTED}/{p}"] for p in settings.parts}
        shifted = {s: outcomes[f"{TARGET}/{s}"] for s in settings.parts[1:]}
        if transfer.flat(outcomes["calib"]):
            flat.add(name)
        rows += transfer.transfer_rows(name, constructed, outcomes["calib"], shifted, ev.delta, ev.n_points,
                                       settings.seed)
        for shift in shifted:
            part = records[f"{TARGET}/{shift}"]
            a_slm, a_llm = float(part["slm_correct"].mean()), float(part["llm_correct"].mean())
            summary = curves.summarize(part, router.mode, a_slm=a_slm, a_llm=a_llm, delta=ev.delta,
                                       n_points=ev.n_points, is_probability=router.is_probability)
            benchmark.append({"strategy": name, "target": shift, "n": len(part), "slm_accuracy": a_slm,
                              "llm_accuracy": a_llm, "trivial": transfer.meets(shifted[shift], -np.inf, ev.delta)[1],
                              **{k: summary[k] for k in ("auroc", "ece", "apgr")}})
    cells = transfer.per_target(rows)
    for row in benchmark:
        row.update(cells[(row["strategy"], row["target"])])
    rates = transfer.success_rates(transfer.ranking_rows(rows, flat))
    context = {"profile": profile.name, "seed": settings.seed, "n_per_set": settings.n, "delta": ev.delta,
               "shifts": list(settings.shifts), "shift_config": asdict(settings.how),
               "constructed_parts": list(settings.parts), "flat_strategies": sorted(flat),
               "calib_n": len(calib_q), "cost_model": cost.describe(), "policy": "accuracy (cheapest within delta)"}
    # How often the base SLM stated a readable confidence, per set: the verbalized row's coverage.
    statements = [{"set": set_name, **statement_counts(pair[0].greedy()[STATEMENT])}
                  for set_name, pair in set_inputs.items()] if VERBALIZED in settings.strategies else []
    metrics = {"context": context, "success_rates": rates,
               "success_rates_by_strategy": transfer.success_rates(rows, ("strategy", "kind")),
               "benchmark": benchmark, "transfer": rows, "verbalized_statements": statements}
    (out / "metrics.json").write_text(to_json(metrics))
    write_report(out / "report.md", metrics)
    return metrics


def write_report(path: Path, metrics: dict) -> None:
    c = metrics["context"]
    lines = [f"# escalate calibrate: {c['profile']}", "",
             f"profile {c['profile']}, seed {c['seed']}, {c['n_per_set']} questions per shifted set and in the "
             f"constructed set, calib split {c['calib_n']} questions, delta {c['delta']:g}, {c['cost_model']}; "
             f"shifts {', '.join(c['shifts'])} ({', '.join(f'{k} {v:g}' for k, v in c['shift_config'].items())}).", "",
             GUIDE, "", "## Success rate per calibration source", "", flat_note(c["flat_strategies"]), "",
             markdown_table(metrics["success_rates"], RATE_COLUMNS), "",
             "## Per strategy and source", "",
             markdown_table(metrics["success_rates_by_strategy"], ("strategy", *RATE_COLUMNS)), "",
             "## Uncertainty benchmark and threshold transfer (strategy x shifted dataset)", "",
             markdown_table(metrics["benchmark"], BENCHMARK_COLUMNS), ""]
    if metrics["verbalized_statements"]:
        lines += ["## Verbalized confidence: statements the base SLM made per set", "", STATEMENTS_GUIDE, "",
                  markdown_table(metrics["verbalized_statements"], STATEMENT_COLUMNS), ""]
    path.write_text("\n".join(lines))


def flat_note(flat: list[str]) -> str:
    """Which strategies the success rates leave out, and why (transfer.ranking_rows)."""
    if not flat:
        return "Every strategy's score ranks the calib split's queries: all are counted."
    return (f"Left out: {', '.join(flat)}, whose score takes one value on the calib split: its threshold keeps "
            "every query or escalates every one, and escalating all meets any accuracy target by paying the LLM "
            "everywhere (its rows are in the tables below).")


def summary_text(metrics: dict, out: Path) -> str:
    """What the command prints: the success rates and the strategy x target table."""
    statements = [format_table(metrics["verbalized_statements"], list(STATEMENT_COLUMNS)), ""] \
        if metrics["verbalized_statements"] else []
    return "\n".join([flat_note(metrics["context"]["flat_strategies"]),
                      format_table(metrics["success_rates"], list(RATE_COLUMNS)), "",
                      format_table(metrics["benchmark"], list(BENCHMARK_COLUMNS)), "", *statements,
                      f"report: {out / 'report.md'}", f"metrics: {out / 'metrics.json'}"])


GUIDE = """\
Each strategy's threshold is fitted by the accuracy policy (the cheapest point with accuracy >= LLM-only - delta)
on a source and applied, without the target's labels, to each shifted dataset. Sources: `constructed`, a
balanced mixture of the constructed set's parts (the profile's own distribution and every shift) with the
target's shift left out; `calib`, the profile's calib split; `single`, each other shifted dataset alone.
`*_met` is the share of sources for which the target kept accuracy >= its LLM-only - delta, `*_saving` the mean
cost saving (1 - normalized cost) there. A `trivial` target is met by never escalating (its SLM-only accuracy is
within delta of LLM-only): success there says nothing about the threshold, so the informative success rate
leaves those targets out. AUROC, ECE (probability scores only) and APGR are the strategy's on the
target, against that target's own SLM-only and LLM-only accuracies."""

STATEMENTS_GUIDE = """\
After its greedy answer the base SLM is given COREA's tag (`Confidence:`) and continues greedily (at most
8 tokens); COREA's parser reads the statement: `ok` is a number in [0, 1] ending it, `malformed` anything
else (no number, words after it, a value above 1, a second tag), `missing` no tag at all (the tag is given,
so none here). An unreadable statement scores 0 (escalated at every threshold above the lowest);
`distinct` counts the different readable values: a score of one value cannot rank."""
