"""The COREA stage (issue 5): teach the SLM to state its confidence, then GRPO with and without a calibration
reward; COREA's cascade on its trained SLM is a registry candidate.

Run: `escalate corea train --profile tiny` (or `dvc repro corea@tiny`). Writes under artifacts/<profile>/corea/:
the warm-up's train samples and targets (validated), checkpoints warmup/, rlvr/ and corea/ (RLVR and COREA
both from the warm-up checkpoint, with the same steps, data and seed), their greedy samples on calib and the
evaluation split, each model's cascade evaluated per domain under eval/<model>/<domain>/, metrics.json and
report.md. Questions of difficulty >= corea.ood_min_difficulty are left out of RL: the out-of-domain slice.
The warm-up, which only teaches the format, sees every train question; trained on the easier ones alone it
made the SLM forget how to solve the held-out ones before RL began.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd

from escalate.config import ConfigError, Profile
from escalate.corea import report
from escalate.corea.grpo import train_grpo
from escalate.corea.warmup import train_warmup, warmup_targets
from escalate.evaluation.run import evaluate
from escalate.models.backends import model_path
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


class CoreaStage(TrainingStage):
    name = "corea"
    command = ("corea", "train")
    help = "warm-up, RLVR and COREA GRPO runs; cascades evaluated; report"
    group_help = "COREA: train the SLM to state a calibrated confidence"
    outputs = ("corea",)
    columns = report.COLUMNS

    def build(self, profile: Profile, root: Path | str = ".") -> Path:
        return build_corea(profile, root)

    def log(self, profile: Profile, root: Path | str = ".") -> dict:
        out = self.directory(profile, root)
        result = json.loads((out / "metrics.json").read_text())
        metrics = {f"{row['model']}/{row['domain']}/{k}": v for row in result["rows"]
                   for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        metrics.update({f"corea/targets/{name}": t["value"] for name, t in result["targets"].items()})
        series = {f"{run}/train/{k}": v for run, s in result["training"].items()
                  for k, v in {"loss": s["losses"], **s.get("rewards", {})}.items()}
        return {"metrics": metrics, "series": series,
                "artifacts": [out / "report.md", out / "metrics.json", out / "eval"]}

    def candidates(self, profile: Profile, root: Path | str = ".") -> list[Candidate]:
        """COREA's confidence cascade on the COREA SLM."""
        return summary_candidates(*corea_candidate(profile, root), ("corea_confidence",))


def corea_candidate(profile: Profile, root: Path | str = ".") -> tuple[Profile, Path]:
    """What registers COREA's cascade: the profile with the COREA checkpoint as its SLM, and the evaluation
    of that cascade on the whole evaluation split (threshold fitted on all of calib).

    `registry.publish.register_candidate("corea_confidence", profile=..., eval_dir=..., ...)` takes both.
    """
    out = paths(profile, root)["corea"]
    return trained_candidate(profile, out / "corea", "corea"), out / "eval" / "corea" / "all"


def build_corea(profile: Profile, root: Path | str = ".") -> Path:
    """Warm up, train RLVR and COREA, sample, evaluate every model per domain, write the report; returns
    metrics.json."""
    cfg, p, out = CoreaStage().inputs(profile, root)
    questions = load_questions(profile, root)
    masks = report.domain_masks(questions, cfg.ood_min_difficulty)
    train = questions[questions["split"] == "train"]
    rl_train = train[masks[report.TARGET_DOMAIN]].reset_index(drop=True)
    if rl_train.empty:
        raise ConfigError(f"corea.ood_min_difficulty {cfg.ood_min_difficulty} leaves no train question for RL")
    train = train.reset_index(drop=True)
    slm = profile.models["slm"]
    dirs = {v: out / v for v in report.VARIANTS}
    progress = Progress("corea", 5)

    train_samples = sample_once(slm, "slm", p["zoo"], train, dataclasses.replace(profile.sampling, k=cfg.k_train),
                                profile.seed)
    write_validated(train_samples, "samples", out / "train_samples.parquet", out / "train_samples_report.json",
                    model_ids=["slm"])
    targets = warmup_targets(train_samples, train)
    write_validated(targets, "refusal_sft", out / "warmup.parquet", out / "warmup_report.json")
    training = {"warmup": train_warmup(model_path(slm, "slm", p["zoo"]), targets, cfg.warmup, dirs["warmup"])}
    progress.step("warm-up trained")
    for name, calibrated in (("rlvr", False), ("corea", True)):
        training[name] = train_grpo(dirs["warmup"], rl_train, dataclasses.replace(cfg.grpo, calibration=calibrated),
                                    dirs[name])
        progress.step(f"{name} trained")

    evaluated = questions[questions["split"].isin(["calib", profile.evaluation.split])].reset_index(drop=True)
    greedy_only = dataclasses.replace(profile.sampling, k=1)  # the router reads the greedy response alone
    samples = pd.concat([sample_once(dataclasses.replace(slm, source=str(dirs[v])), v, p["zoo"], evaluated,
                                     greedy_only, profile.seed) for v in report.VARIANTS], ignore_index=True)
    write_validated(samples, "samples", out / "samples.parquet", out / "samples_report.json",
                    model_ids=list(report.VARIANTS))
    progress.step("sampled every model on calib and test")

    rows, plots = _evaluations(profile, root, questions, masks, samples)
    context = {"profile": profile.name, "split": profile.evaluation.split,
               "cost_model": cost_model(profile, root).describe(), "seed": profile.seed,
               "delta": profile.evaluation.delta, "ood_min_difficulty": cfg.ood_min_difficulty,
               "n_warmup_questions": len(train), "n_rl_questions": len(rl_train)}
    verdicts = report.check_targets(rows)
    report.write_corea_report(out / "report.md", context=context, rows=rows, targets=verdicts,
                              training=training, plots=plots)
    metrics = {"context": context, "rows": rows, "targets": verdicts, "training": training,
               "warmup_target_mean": float(targets["p_correct"].mean()), "seconds": progress.seconds()}
    written = write_metrics(out, metrics)
    progress.step("evaluated; report written")
    progress.close()
    return written


def _evaluations(profile: Profile, root: Path | str, questions: pd.DataFrame, masks: dict[str, pd.Series],
                 samples: pd.DataFrame) -> tuple[list[dict], dict[str, str]]:
    """Every model's cascade on every non-empty domain (evaluation.run.evaluate), as report rows and plot paths."""
    p, ev = paths(profile, root), profile.evaluation
    vanilla = load_samples(profile, root)
    slm_samples = {"base": vanilla[vanilla["model"] == "slm"],
                   **{v: samples[samples["model"] == v].assign(model="slm") for v in report.VARIANTS}}
    llm = vanilla[vanilla["model"] == "llm"]
    cost, timings = cost_model(profile, root), pd.read_parquet(p["latency"])
    settings = eval_settings(profile)
    rows, plots = [], {}
    for domain in masks:
        domain_questions = report.eval_questions(questions, masks, domain, ev.split)
        tested = domain_questions.loc[domain_questions["split"] == ev.split, "id"]
        if tested.empty:
            continue
        for model, slm in slm_samples.items():
            router, where = report.ROUTER[model], Path("eval") / model / domain
            # the label names the model and domain in each plot's title, which otherwise names only the router
            labelled = dataclasses.replace(settings, profile=f"{profile.name}, {model}, {domain}")
            result = evaluate(domain_questions, pd.concat([slm, llm], ignore_index=True), cost, labelled,
                              p["corea"] / where, timings, routers=[router])
            greedy = slm[(slm["sample_idx"] == 0) & slm["id"].isin(tested)]
            rows.append(report.model_row(model, domain, result, greedy))
            if domain != "all":  # the report shows the domains apart; "all" has its diagrams on disk
                plots[f"Reliability: {model}, {domain}"] = str(where / f"reliability_{router}.png")
    return rows, plots
