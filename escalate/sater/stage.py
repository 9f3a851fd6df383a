"""The SATER stage (issue 4): stage I prefers the SLM's shortest correct response (DPO), stage II answers or
refuses (SFT) at each τ of the sweep, and SATER's three routing modes are evaluated against the vanilla SLM's
cascades; its three strategies on the stage-II SLM are registry candidates.

Run: `escalate sater train --profile tiny` (or `dvc repro sater@tiny`). Writes under artifacts/<profile>/sater/:
the training tables (validated: train samples, preferences, refusal targets per τ), checkpoints stage1/,
stage2/ (the profile's τ, the candidate SLM) and sweep/tau_<τ>/, samples.parquet (stage I's greedy answers
on the evaluation split, every stage-II model's on calib and the evaluation split, K of them for the
candidate's vote), evaluations under eval/ (vanilla/: the zoo SLM's P(T) cascade and self-consistency;
sater/: refusal cascade, pre-generation refusal probability and weighted vote on the stage-II SLM;
tau_<τ>/: the sweep), metrics.json and report.md with plots.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd

from escalate.config import ModelConfig, Profile
from escalate.evaluation import plots
from escalate.evaluation.run import evaluate
from escalate.models.backends import model_path
from escalate.sater import report
from escalate.sater.dpo import train_dpo
from escalate.sater.preferences import REFUSAL_COMPLETION, build_preferences, refusal_targets
from escalate.sater.refusal_sft import train_refusal
from escalate.stages.base import (
    Candidate,
    Progress,
    TrainingStage,
    cost_model,
    eval_settings,
    load_questions,
    load_samples,
    paths,
    sample_once,
    summary_candidates,
    trained_candidate,
    write_metrics,
    write_validated,
)


class SaterStage(TrainingStage):
    name = "sater"
    command = ("sater", "train")
    help = "stage I (DPO), stage II (refusal SFT) at each τ, SATER routing vs the vanilla cascades; report"
    group_help = "SATER: train the SLM to answer short and refuse"
    outputs = ("sater",)
    columns = report.ROUTING_COLUMNS

    def build(self, profile: Profile, root: Path | str = ".") -> Path:
        return build_sater(profile, root)

    def log(self, profile: Profile, root: Path | str = ".") -> dict:
        """Tracker.metrics leaves out what MLflow cannot log (booleans, undefined figures)."""
        out = self.directory(profile, root)
        result = json.loads((out / "metrics.json").read_text())
        metrics = {f"sater/stage1/{k}": v for k, v in result["stage1"].items()}
        metrics.update({f"sater/stage2/{k}": v for k, v in result["stage2"].items()})
        metrics.update({f"sater/{row['slm']}/{row['strategy']}/{k}": v for row in result["rows"]
                        for k, v in row.items() if k not in ("slm", "strategy", "mode")})
        metrics.update({f"sater/sweep/tau_{row['tau']:g}/{k}": v for row in result["sweep"]
                        for k, v in row.items() if k != "tau"})
        metrics.update({f"sater/latency/{row['strategy']}/{k}": v for row in result["latency_cuts"]
                        for k, v in row.items() if k != "strategy"})
        metrics.update({f"sater/targets/{name}": t["value"] for name, t in result["targets"].items()})
        series = {f"sater/train/{run}/loss": s["losses"] for run, s in result["training"].items()}
        return {"metrics": metrics, "series": series,
                "artifacts": [out / "report.md", out / "metrics.json", out / "eval", *sorted(out.glob("*.png"))]}

    def candidates(self, profile: Profile, root: Path | str = ".") -> list[Candidate]:
        """SATER's three strategies (report.STRATEGIES) on the stage-II SLM."""
        return summary_candidates(*sater_candidate(profile, root), report.STRATEGIES)


def sater_candidate(profile: Profile, root: Path | str = ".") -> tuple[Profile, Path]:
    """What registers SATER's cascades (report.STRATEGIES): the profile with the stage-II checkpoint
    (the profile's τ) as its SLM, and their evaluation on the evaluation split (thresholds fitted on calib)."""
    out = paths(profile, root)["sater"]
    return trained_candidate(profile, out / "stage2", "sater"), out / "eval" / "sater"


def build_sater(profile: Profile, root: Path | str = ".") -> Path:
    """Train both stages over the τ sweep, sample, evaluate every strategy, write the report; returns metrics.json."""
    cfg, p, out = SaterStage().inputs(profile, root)
    questions = load_questions(profile, root)
    split = profile.evaluation.split
    train = questions[questions["split"] == "train"].reset_index(drop=True)
    evaluated = questions[questions["split"].isin(["calib", split])].reset_index(drop=True)
    slm = profile.models["slm"]
    taus = cfg.taus()
    stage2 = {t: out / "stage2" if t == cfg.refusal.tau else out / "sweep" / f"tau_{t:g}" for t in taus}
    names = {t: "sater2" if t == cfg.refusal.tau else f"sater2_tau{t:g}" for t in taus}

    def model(directory: Path) -> ModelConfig:
        return dataclasses.replace(slm, source=str(directory))

    progress = Progress("sater", 5 + len(taus))
    train_sampling = dataclasses.replace(profile.sampling, k=cfg.k_train)
    train_samples = [sample_once(slm, "slm", p["zoo"], train, train_sampling, profile.seed)]
    prefs = build_preferences(train_samples[0], train)
    write_validated(prefs, "preferences", out / "preferences.parquet", out / "preferences_report.json")
    if prefs.empty:
        raise ValueError(f"no train question has a correct sample among {cfg.k_train}: stage I has no preference pair")
    training = {"stage1": train_dpo(model_path(slm, "slm", p["zoo"]), prefs, cfg.dpo, out / "stage1")}
    progress.step("stage I trained")

    train_samples.append(sample_once(model(out / "stage1"), "sater1", p["zoo"], train, train_sampling, profile.seed))
    write_validated(pd.concat(train_samples, ignore_index=True), "samples", out / "train_samples.parquet",
                    out / "train_samples_report.json", model_ids=["slm", "sater1"])
    progress.step("stage I sampled on train")
    target_share = {}
    for tau in taus:
        targets = refusal_targets(train_samples[1], train, tau)
        suffix = "" if tau == cfg.refusal.tau else f"_tau{tau:g}"
        write_validated(targets, "refusal_sft", out / f"refusal_sft{suffix}.parquet",
                        out / f"refusal_sft{suffix}_report.json")
        target_share[tau] = float(targets["completion"].eq(REFUSAL_COMPLETION).mean())
        summary = train_refusal(out / "stage1", targets, dataclasses.replace(cfg.refusal, tau=tau), stage2[tau])
        if tau == cfg.refusal.tau:
            training["stage2"] = summary
        progress.step(f"stage II trained at τ = {tau:g}")

    greedy_only = dataclasses.replace(profile.sampling, k=1)
    test = evaluated[evaluated["split"] == split].reset_index(drop=True)
    parts = [sample_once(model(out / "stage1"), "sater1", p["zoo"], test, greedy_only, profile.seed)]
    for tau in taus:  # the candidate's SLM pays for the vote's K samples; the sweep reads greedy answers only
        sampling = profile.sampling if tau == cfg.refusal.tau else greedy_only
        parts.append(sample_once(model(stage2[tau]), names[tau], p["zoo"], evaluated, sampling, profile.seed))
    samples = pd.concat(parts, ignore_index=True)
    write_validated(samples, "samples", out / "samples.parquet", out / "samples_report.json",
                    model_ids=["sater1", *names.values()])
    progress.step("every SATER model sampled on calib and test")

    vanilla = load_samples(profile, root)
    evaluations = _evaluations(profile, root, evaluated, vanilla, samples, names, stage2)
    progress.step("every strategy evaluated")

    stage1 = report.stage_one(report.greedy(vanilla, "slm", split), report.greedy(samples, "sater1", split))
    sweep = [report.sweep_row(t, target_share[t], report.greedy(samples, names[t], split), evaluations[f"tau_{t:g}"])
             for t in taus]
    sater_slm = samples[samples["model"] == "sater2"]
    tokens = {**{s: report.slm_tokens(vanilla[vanilla["model"] == "slm"], split, s == "self_consistency")
                 for s in report.VANILLA},
              **{s: report.slm_tokens(sater_slm, split, s == "sater_vote") for s in report.STRATEGIES}}
    rows = report.routing_rows({"vanilla": evaluations["vanilla"], "sater": evaluations["sater"]}, tokens)
    targets = report.check_targets(stage1, rows)
    context = {"profile": profile.name, "split": split, "cost_model": cost_model(profile, root).describe(),
               "seed": profile.seed, "delta": profile.evaluation.delta, "tau": cfg.refusal.tau,
               "n": int((evaluated["split"] == split).sum())}
    figures = _plots(out, evaluations, sweep, profile.name, split, context["cost_model"])
    by_difficulty = report.tokens_by_difficulty(questions, report.greedy(vanilla, "slm", split),
                                                report.greedy(samples, "sater1", split))
    report.write_sater_report(out / "report.md", context=context, stage1=stage1, tokens_by_difficulty=by_difficulty,
                              sweep=sweep, rows=rows, targets=targets, training=training, plots=figures)
    metrics = {"context": context, "stage1": stage1, "stage2": report.refusals(report.greedy(samples, "sater2", split)),
               "n_preferences": len(prefs), "sweep": sweep, "rows": rows, "targets": targets,
               "latency_cuts": report.latency_cuts(rows), "training": training, "seconds": progress.seconds()}
    written = write_metrics(out, metrics)
    progress.step("report written")
    progress.close()
    return written


def _evaluations(profile: Profile, root: Path | str, questions: pd.DataFrame, vanilla: pd.DataFrame,
                 samples: pd.DataFrame, names: dict[float, str], stage2: dict[float, Path]) -> dict[str, dict]:
    """evaluation.run.evaluate of the vanilla SLM's cascades and of every stage-II model's SATER strategies,
    each with the same LLM samples, cost model and latency model (the SATER SLM has the zoo SLM's shape)."""
    p, sater_cfg = paths(profile, root), profile.sater
    llm = vanilla[vanilla["model"] == "llm"]
    cost, timings, settings = cost_model(profile, root), pd.read_parquet(p["latency"]), eval_settings(profile)

    def run(where: str, slm_samples: pd.DataFrame, routers: tuple[str, ...], label: str, slm_dir: Path | None) -> dict:
        labelled = dataclasses.replace(settings, profile=f"{profile.name}, {label}")
        return evaluate(questions, pd.concat([slm_samples.assign(model="slm"), llm], ignore_index=True), cost,
                        labelled, p["sater"] / "eval" / where, timings, routers=list(routers),
                        model_dir=None if slm_dir is None else str(slm_dir.resolve()))

    out = {"vanilla": run("vanilla", vanilla[vanilla["model"] == "slm"], report.VANILLA, "vanilla SLM", None),
           "sater": run("sater", samples[samples["model"] == "sater2"], report.STRATEGIES,
                        f"SATER SLM, τ {sater_cfg.refusal.tau:g}", stage2[sater_cfg.refusal.tau])}
    for tau, name in names.items():
        out[f"tau_{tau:g}"] = out["sater"] if name == "sater2" else run(
            f"tau_{tau:g}", samples[samples["model"] == name], report.SWEPT, f"SATER SLM, τ {tau:g}", stage2[tau])
    return out


def _plots(out: Path, evaluations: dict[str, dict], sweep: list[dict], profile: str, split: str,
           cost_model_text: str) -> dict[str, str]:
    """The report's figures (paths relative to the report): accuracy vs cost of vanilla and SATER strategies
    together, and the τ sweep."""
    curve_map, refs = {}, {}
    for label, where in (("vanilla", "vanilla"), ("SATER", "sater")):
        curves_json = json.loads((out / "eval" / where / "curves.json").read_text())
        keep = report.VANILLA if label == "vanilla" else report.STRATEGIES
        curve_map.update({f"{name} ({label})": pd.DataFrame(curves_json[name]) for name in keep})
        for row in evaluations[where]["summary"]:
            if row["strategy"] == "SLM-only" or (row["strategy"] == "LLM-only" and label == "vanilla"):
                refs[f"{row['strategy']} ({label})" if row["strategy"] == "SLM-only" else "LLM-only"] = row
    ref_frame = pd.DataFrame.from_dict(refs, orient="index")[["cost", "accuracy", "call_rate"]]
    plots.plot_accuracy_vs_cost(curve_map, ref_frame, out / "accuracy_vs_cost.png", profile=profile, split=split,
                                cost_model=cost_model_text)
    plots.plot_accuracy_vs_call_rate(curve_map, ref_frame, out / "accuracy_vs_call_rate.png", profile=profile,
                                     split=split)
    report.plot_sweep(sweep, out / "tau_sweep.png", profile=profile, split=split)
    return {"Accuracy vs cost": "accuracy_vs_cost.png", "Accuracy vs LLM call rate": "accuracy_vs_call_rate.png",
            "Stage II: the τ sweep": "tau_sweep.png"}
