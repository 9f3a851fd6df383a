"""The pipeline's stages as plain functions: each reads its inputs from disk and writes its outputs.

Each stage is one `escalate` subcommand and one DVC stage (dvc.yaml), so a stage's command is
defined once: `dvc repro` decides what to skip, the Prefect flow runs `dvc repro` stage by stage,
and a person can run any stage by hand. Every table is validated before it is written.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from escalate.config import ConfigError, ModelConfig, Profile, SamplingConfig
from escalate.data.adapters import get_adapter
from escalate.data.validation import ValidationError, ensure_valid, validate
from escalate.evaluation.cost import CostModel, from_config
from escalate.evaluation.run import EvalSettings, evaluate, to_json
from escalate.models.backends import make_backend, model_path
from escalate.prompts import format_prompt
from escalate.sampling import measure_latency, sample

STAGES = ("questions", "zoo", "samples", "evaluate")


def paths(profile: Profile, root: Path | str = ".") -> dict[str, Path]:
    """Where each stage writes, under artifacts/<profile>/ (dvc.yaml lists the same paths)."""
    base = profile.artifacts(root)
    return {
        "questions": base / "questions.parquet",
        "questions_report": base / "questions_report.json",
        "zoo": base / "zoo",
        "samples": base / "samples.parquet",
        "samples_report": base / "samples_report.json",
        "latency": base / "latency.parquet",
        "eval": base / "eval",
        "sater": base / "sater",
        "corea": base / "corea",
    }


def _write_validated(df: pd.DataFrame, table: str, out: Path, report_path: Path, **rules: object) -> None:
    """Validate, always write the report, and write the table only when it passed."""
    report = validate(df, table, source=str(out), **rules)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report.to_dict(), indent=2, default=str))
    if not report.ok:
        raise ValidationError(report)
    df.to_parquet(out, index=False)


def numeric_tasks(questions: pd.DataFrame) -> list[str]:
    """Tasks graded as numbers: those whose rows carry no choices."""
    no_choices = questions["choices"].isna() | (questions["choices"].astype(str).str.strip() == "")
    return sorted(questions.loc[no_choices, "task"].astype(str).unique())


def build_questions(profile: Profile, root: Path | str = ".") -> Path:
    p = paths(profile, root)
    df = get_adapter(profile.data.adapter).load(profile.data, profile.seed)
    _write_validated(df, "questions", p["questions"], p["questions_report"], numeric_tasks=numeric_tasks(df),
                     max_question_chars=profile.data.max_question_chars, eval_split=profile.evaluation.split)
    return p["questions"]


def load_questions(profile: Profile, root: Path | str = ".") -> pd.DataFrame:
    path = paths(profile, root)["questions"]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run `escalate data build --profile {profile.name}` first")
    df = pd.read_parquet(path)
    ensure_valid(df, "questions", source=str(path), numeric_tasks=numeric_tasks(df),
                 max_question_chars=profile.data.max_question_chars, eval_split=profile.evaluation.split)
    return df


def build_zoo(profile: Profile, root: Path | str = ".") -> Path:
    """Train the embedded models (sources 'zoo'); record external ones in the manifest either way."""
    from escalate.models import zoo  # torch and transformers: only for the stages that need them

    out = paths(profile, root)["zoo"]
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {}
    if profile.zoo is not None and any(m.source == "zoo" for m in profile.models.values()):
        questions = load_questions(profile, root)
        exclude = set(questions.loc[questions["split"] != "train", "question"])
        summary = zoo.build_zoo(profile.zoo, profile.data.arith, out, profile.seed, exclude)
    manifest = {role: {"name": m.name, "source": m.source, "backend": m.backend, "endpoint": m.endpoint,
                       "n_params": summary.get("models", {}).get(role, {}).get("n_params", m.n_params)}
                for role, m in profile.models.items()}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def build_samples(profile: Profile, root: Path | str = ".") -> Path:
    p = paths(profile, root)
    questions = load_questions(profile, root)
    questions = questions[questions["split"].isin(profile.sampling.splits)].reset_index(drop=True)
    parts, timings = [], []
    prompts = [format_prompt(q, c) for q, c in zip(questions["question"], questions["choices"])]
    for role in ("slm", "llm"):
        backend = make_backend(profile.models[role], role, p["zoo"], profile.sampling.batch_size)
        try:
            parts.append(sample(backend, questions, role, profile.sampling, profile.seed))
            timings.append(measure_latency(backend, prompts, role, profile.sampling.max_new_tokens))
        finally:
            backend.close()
    pd.concat(timings, ignore_index=True).to_parquet(p["latency"], index=False)
    samples = pd.concat(parts, ignore_index=True)
    _write_validated(samples, "samples", p["samples"], p["samples_report"], model_ids=list(profile.models))
    return p["samples"]


def cost_model(profile: Profile, root: Path | str = ".") -> CostModel:
    """The profile's cost model; FLOPs pricing reads parameter counts from the zoo manifest."""
    manifest = json.loads((paths(profile, root)["zoo"] / "manifest.json").read_text())
    return from_config(profile.cost.kind, profile.cost.prices, {r: m.get("n_params") for r, m in manifest.items()})


def eval_settings(profile: Profile) -> EvalSettings:
    """The profile's evaluation settings, the same for every stage that evaluates cascades."""
    ev = profile.evaluation
    return EvalSettings(split=ev.split, delta=ev.delta, n_points=ev.n_thresholds, seed=ev.seed, profile=profile.name,
                        budget=ev.budget, error_cost=ev.error_cost, risk_epsilon=ev.risk_epsilon,
                        risk_alpha=ev.risk_alpha)


def run_evaluation(profile: Profile, root: Path | str = ".") -> dict:
    p = paths(profile, root)
    questions = load_questions(profile, root)
    samples = pd.read_parquet(p["samples"])
    ensure_valid(samples, "samples", source=str(p["samples"]), model_ids=list(profile.models))
    cost = cost_model(profile, root)
    ev = profile.evaluation
    settings = eval_settings(profile)
    timings = pd.read_parquet(p["latency"])
    # Absolute, so a pickled hidden-state probe finds its checkpoint from any working directory.
    slm = model_path(profile.models["slm"], "slm", p["zoo"])
    model_dir = str(Path(slm).resolve()) if Path(slm).exists() else slm
    return evaluate(questions, samples, cost, settings, p["eval"], timings, routers=ev.strategies or None,
                    model_dir=model_dir)


def _sample_once(cfg: ModelConfig, role: str, zoo_dir: Path, questions: pd.DataFrame,
                 sampling: SamplingConfig, seed: int) -> pd.DataFrame:
    """The samples table of one model on `questions`, its backend closed afterwards."""
    backend = make_backend(cfg, role, zoo_dir, sampling.batch_size)
    try:
        return sample(backend, questions, role, sampling, seed)
    finally:
        backend.close()


def _training_inputs(profile: Profile, root: Path | str, method: str) -> tuple[object, dict[str, Path], Path]:
    """A training stage's profile section, the pipeline paths and its (created) output directory;
    a clear error when the profile has no such section or the samples it starts from are missing."""
    cfg = getattr(profile, method)
    if cfg is None:
        raise ConfigError(f"profile {profile.name!r} has no {method} section; add one to its YAML to train "
                          f"{method.upper()}")
    p = paths(profile, root)
    out = p[method]
    shutil.rmtree(out, ignore_errors=True)  # as DVC does before a run: no table or report of an earlier one stays
    out.mkdir(parents=True)
    if not p["samples"].is_file():
        raise FileNotFoundError(f"{p['samples']}: missing; run `escalate sample --profile {profile.name}` first")
    return cfg, p, out


def build_sater(profile: Profile, root: Path | str = ".") -> Path:
    """SATER (issue 4): stage I prefers the SLM's shortest correct response (DPO), stage II answers or refuses
    (SFT) at each τ of the sweep, and SATER's three routing modes are evaluated against the vanilla SLM's cascades.

    Writes under artifacts/<profile>/sater/: the training tables (validated: train samples,
    preferences, refusal targets per τ), checkpoints stage1/, stage2/ (the profile's τ, the
    candidate SLM) and sweep/tau_<τ>/, samples.parquet (stage I's greedy answers on the evaluation split,
    every stage-II model's on calib and the evaluation split, K of them for the candidate's vote),
    evaluations under eval/ (vanilla/: the zoo SLM's P(T) cascade and
    self-consistency; sater/: refusal cascade, pre-generation refusal probability and weighted vote
    on the stage-II SLM; tau_<τ>/: the sweep), metrics.json and report.md with plots.
    """
    from escalate.train import sater_report as report
    from escalate.train.preferences import REFUSAL_COMPLETION, build_preferences, refusal_targets
    from escalate.train.sater_dpo import train_dpo
    from escalate.train.sater_refusal import train_refusal

    cfg, p, out = _training_inputs(profile, root, "sater")
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

    start = time.perf_counter()
    progress = tqdm(total=5 + len(taus), desc="sater", unit="step", dynamic_ncols=True)

    def step(what: str) -> None:
        progress.set_postfix_str(what)
        progress.update()

    train_sampling = dataclasses.replace(profile.sampling, k=cfg.k_train)
    train_samples = [_sample_once(slm, "slm", p["zoo"], train, train_sampling, profile.seed)]
    prefs = build_preferences(train_samples[0], train)
    _write_validated(prefs, "preferences", out / "preferences.parquet", out / "preferences_report.json")
    if prefs.empty:
        raise ValueError(f"no train question has a correct sample among {cfg.k_train}: stage I has no preference pair")
    training = {"stage1": train_dpo(model_path(slm, "slm", p["zoo"]), prefs, cfg.dpo, out / "stage1")}
    step("stage I trained")

    train_samples.append(_sample_once(model(out / "stage1"), "sater1", p["zoo"], train, train_sampling, profile.seed))
    _write_validated(pd.concat(train_samples, ignore_index=True), "samples", out / "train_samples.parquet",
                     out / "train_samples_report.json", model_ids=["slm", "sater1"])
    step("stage I sampled on train")
    target_share = {}
    for tau in taus:
        targets = refusal_targets(train_samples[1], train, tau)
        suffix = "" if tau == cfg.refusal.tau else f"_tau{tau:g}"
        _write_validated(targets, "refusal_sft", out / f"refusal_sft{suffix}.parquet",
                         out / f"refusal_sft{suffix}_report.json")
        target_share[tau] = float(targets["completion"].eq(REFUSAL_COMPLETION).mean())
        summary = train_refusal(out / "stage1", targets, dataclasses.replace(cfg.refusal, tau=tau), stage2[tau])
        if tau == cfg.refusal.tau:
            training["stage2"] = summary
        step(f"stage II trained at τ = {tau:g}")

    greedy_only = dataclasses.replace(profile.sampling, k=1)
    test = evaluated[evaluated["split"] == split].reset_index(drop=True)
    parts = [_sample_once(model(out / "stage1"), "sater1", p["zoo"], test, greedy_only, profile.seed)]
    for tau in taus:  # the candidate's SLM pays for the vote's K samples; the sweep reads greedy answers only
        sampling = profile.sampling if tau == cfg.refusal.tau else greedy_only
        parts.append(_sample_once(model(stage2[tau]), names[tau], p["zoo"], evaluated, sampling, profile.seed))
    samples = pd.concat(parts, ignore_index=True)
    _write_validated(samples, "samples", out / "samples.parquet", out / "samples_report.json",
                     model_ids=["sater1", *names.values()])
    step("every SATER model sampled on calib and test")

    vanilla = pd.read_parquet(p["samples"])
    ensure_valid(vanilla, "samples", source=str(p["samples"]), model_ids=list(profile.models))
    evaluations = _sater_evaluations(profile, root, evaluated, vanilla, samples, names, stage2)
    step("every strategy evaluated")

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
    plots = _sater_plots(out, evaluations, sweep, profile.name, split, context["cost_model"])
    by_difficulty = report.tokens_by_difficulty(questions, report.greedy(vanilla, "slm", split),
                                                report.greedy(samples, "sater1", split))
    report.write_sater_report(out / "report.md", context=context, stage1=stage1, tokens_by_difficulty=by_difficulty,
                              sweep=sweep, rows=rows, targets=targets, training=training, plots=plots)
    metrics = {"context": context, "stage1": stage1, "stage2": report.refusals(report.greedy(samples, "sater2", split)),
               "n_preferences": len(prefs), "sweep": sweep, "rows": rows, "targets": targets,
               "latency_cuts": report.latency_cuts(rows), "training": training,
               "seconds": time.perf_counter() - start}
    (out / "metrics.json").write_text(to_json(metrics))
    step("report written")
    progress.close()
    return out / "metrics.json"


def _sater_evaluations(profile: Profile, root: Path | str, questions: pd.DataFrame, vanilla: pd.DataFrame,
                       samples: pd.DataFrame, names: dict[float, str], stage2: dict[float, Path]) -> dict[str, dict]:
    """evaluation.run.evaluate of the vanilla SLM's cascades and of every stage-II model's SATER strategies,
    each with the same LLM samples, cost model and latency model (the SATER SLM has the zoo SLM's shape)."""
    from escalate.train import sater_report as report

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


def _sater_plots(out: Path, evaluations: dict[str, dict], sweep: list[dict], profile: str, split: str,
                 cost_model_text: str) -> dict[str, str]:
    """The report's figures (paths relative to the report): accuracy vs cost of vanilla and SATER strategies
    together, and the τ sweep."""
    from escalate.evaluation import plots
    from escalate.train import sater_report as report

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


def build_corea(profile: Profile, root: Path | str = ".") -> Path:
    """COREA (issue 5): teach the SLM to state its confidence, then GRPO with and without a calibration reward.

    Writes under artifacts/<profile>/corea/: the warm-up's train samples and targets (validated),
    checkpoints warmup/, rlvr/ and corea/ (RLVR and COREA both from the warm-up checkpoint, with the
    same steps, data and seed), their greedy samples on calib and the evaluation split, each model's
    cascade evaluated per domain under eval/<model>/<domain>/, metrics.json and report.md. Questions
    of difficulty >= corea.ood_min_difficulty are left out of RL: the out-of-domain slice. The
    warm-up, which only teaches the format, sees every train question; trained on the easier ones
    alone it made the SLM forget how to solve the held-out ones before RL began.
    """
    from escalate.train import corea_report
    from escalate.train.corea_grpo import train_grpo
    from escalate.train.corea_warmup import train_warmup, warmup_targets

    cfg, p, out = _training_inputs(profile, root, "corea")
    questions = load_questions(profile, root)
    masks = corea_report.domain_masks(questions, cfg.ood_min_difficulty)
    train = questions[questions["split"] == "train"]
    rl_train = train[masks[corea_report.TARGET_DOMAIN]].reset_index(drop=True)
    if rl_train.empty:
        raise ConfigError(f"corea.ood_min_difficulty {cfg.ood_min_difficulty} leaves no train question for RL")
    train = train.reset_index(drop=True)
    slm = profile.models["slm"]
    dirs = {v: out / v for v in corea_report.VARIANTS}
    start = time.perf_counter()
    progress = tqdm(total=5, desc="corea", unit="step", dynamic_ncols=True)

    def step(what: str) -> None:
        progress.set_postfix_str(what)
        progress.update()

    train_samples = _sample_once(slm, "slm", p["zoo"], train, dataclasses.replace(profile.sampling, k=cfg.k_train),
                                 profile.seed)
    _write_validated(train_samples, "samples", out / "train_samples.parquet", out / "train_samples_report.json",
                     model_ids=["slm"])
    targets = warmup_targets(train_samples, train)
    _write_validated(targets, "refusal_sft", out / "warmup.parquet", out / "warmup_report.json")
    training = {"warmup": train_warmup(model_path(slm, "slm", p["zoo"]), targets, cfg.warmup, dirs["warmup"])}
    step("warm-up trained")
    for name, calibrated in (("rlvr", False), ("corea", True)):
        training[name] = train_grpo(dirs["warmup"], rl_train, dataclasses.replace(cfg.grpo, calibration=calibrated),
                                    dirs[name])
        step(f"{name} trained")

    evaluated = questions[questions["split"].isin(["calib", profile.evaluation.split])].reset_index(drop=True)
    greedy_only = dataclasses.replace(profile.sampling, k=1)  # the router reads the greedy response alone
    samples = pd.concat([_sample_once(dataclasses.replace(slm, source=str(dirs[v])), v, p["zoo"], evaluated,
                                      greedy_only, profile.seed) for v in corea_report.VARIANTS], ignore_index=True)
    _write_validated(samples, "samples", out / "samples.parquet", out / "samples_report.json",
                     model_ids=list(corea_report.VARIANTS))
    step("sampled every model on calib and test")

    rows, plots = _corea_evaluations(profile, root, questions, masks, samples)
    context = {"profile": profile.name, "split": profile.evaluation.split,
               "cost_model": cost_model(profile, root).describe(), "seed": profile.seed,
               "delta": profile.evaluation.delta, "ood_min_difficulty": cfg.ood_min_difficulty,
               "n_warmup_questions": len(train), "n_rl_questions": len(rl_train)}
    verdicts = corea_report.check_targets(rows)
    corea_report.write_corea_report(out / "report.md", context=context, rows=rows, targets=verdicts,
                                    training=training, plots=plots)
    metrics = {"context": context, "rows": rows, "targets": verdicts, "training": training,
               "warmup_target_mean": float(targets["p_correct"].mean()), "seconds": time.perf_counter() - start}
    (out / "metrics.json").write_text(to_json(metrics))
    step("evaluated; report written")
    progress.close()
    return out / "metrics.json"


def _corea_evaluations(profile: Profile, root: Path | str, questions: pd.DataFrame, masks: dict[str, pd.Series],
                       samples: pd.DataFrame) -> tuple[list[dict], dict[str, str]]:
    """Every model's cascade on every non-empty domain (evaluation.run.evaluate), as report rows and plot paths."""
    from escalate.train import corea_report

    p, ev = paths(profile, root), profile.evaluation
    vanilla = pd.read_parquet(p["samples"])
    ensure_valid(vanilla, "samples", source=str(p["samples"]), model_ids=list(profile.models))
    slm_samples = {"base": vanilla[vanilla["model"] == "slm"],
                   **{v: samples[samples["model"] == v].assign(model="slm") for v in corea_report.VARIANTS}}
    llm = vanilla[vanilla["model"] == "llm"]
    cost, timings = cost_model(profile, root), pd.read_parquet(p["latency"])
    settings = eval_settings(profile)
    rows, plots = [], {}
    for domain in masks:
        domain_questions = corea_report.eval_questions(questions, masks, domain, ev.split)
        tested = domain_questions.loc[domain_questions["split"] == ev.split, "id"]
        if tested.empty:
            continue
        for model, slm in slm_samples.items():
            router, where = corea_report.ROUTER[model], Path("eval") / model / domain
            # the label names the model and domain in each plot's title, which otherwise names only the router
            labelled = dataclasses.replace(settings, profile=f"{profile.name}, {model}, {domain}")
            result = evaluate(domain_questions, pd.concat([slm, llm], ignore_index=True), cost, labelled,
                              p["corea"] / where, timings, routers=[router])
            greedy = slm[(slm["sample_idx"] == 0) & slm["id"].isin(tested)]
            rows.append(corea_report.model_row(model, domain, result, greedy))
            if domain != "all":  # the report shows the domains apart; "all" has its diagrams on disk
                plots[f"Reliability: {model}, {domain}"] = str(where / f"reliability_{router}.png")
    return rows, plots


def _trained_candidate(profile: Profile, checkpoint: Path, suffix: str) -> Profile:
    """The profile with a trained checkpoint as its SLM, named `<name>-<suffix>` in the registry."""
    base = profile.models["slm"]
    slm = dataclasses.replace(base, name=f"{base.name}-{suffix}", source=str(checkpoint.resolve()))
    return dataclasses.replace(profile, models={**profile.models, "slm": slm})


def corea_candidate(profile: Profile, root: Path | str = ".") -> tuple[Profile, Path]:
    """What registers COREA's cascade: the profile with the COREA checkpoint as its SLM, and the evaluation
    of that cascade on the whole evaluation split (threshold fitted on all of calib).

    `registry.publish.register_candidate("corea_confidence", profile=..., eval_dir=..., ...)` takes both.
    """
    out = paths(profile, root)["corea"]
    return _trained_candidate(profile, out / "corea", "corea"), out / "eval" / "corea" / "all"


def sater_candidate(profile: Profile, root: Path | str = ".") -> tuple[Profile, Path]:
    """What registers SATER's cascades (sater_report.STRATEGIES): the profile with the stage-II checkpoint
    (the profile's τ) as its SLM, and their evaluation on the evaluation split (thresholds fitted on calib)."""
    out = paths(profile, root)["sater"]
    return _trained_candidate(profile, out / "stage2", "sater"), out / "eval" / "sater"


TRAINING_STAGES = ("sater", "corea", "citer")  # in pipeline order: citer compares itself with SATER's cascade


def trained_stages(profile: Profile) -> tuple[str, ...]:
    """The training stages the profile configures (a section each), in pipeline order."""
    return tuple(stage for stage in TRAINING_STAGES if getattr(profile, stage) is not None)


def candidates(profile: Profile, root: Path | str = ".") -> list[tuple[dict, Profile, Path]]:
    """Every candidate cascade of a finished pipeline: (summary row, the profile it runs with, the directory it
    is registered from). The evaluate stage's strategies on the zoo SLM, then each configured training stage's:
    SATER's three strategies and COREA's cascade on their trained SLMs, and CITER's token-level cascade."""
    from escalate.citer.stage import citer_candidate
    from escalate.train.sater_report import STRATEGIES as SATER_STRATEGIES

    def summary(source: tuple[Profile, Path], strategies: tuple[str, ...] | None) -> list[tuple[dict, Profile, Path]]:
        rows = json.loads((source[1] / "metrics.json").read_text())["summary"]
        return [(r, *source) for r in rows if strategies is None or r["strategy"] in strategies]

    found = summary((profile, paths(profile, root)["eval"]), None)
    for stage in trained_stages(profile):
        if stage == "sater":
            found += summary(sater_candidate(profile, root), SATER_STRATEGIES)
        elif stage == "corea":
            found += summary(corea_candidate(profile, root), ("corea_confidence",))
        else:
            row, citer_dir = citer_candidate(profile, root)
            found.append((row, profile, citer_dir))
    # A training stage's router evaluated by the evaluate stage too (evaluation.strategies empty: every router)
    # ran there on the untrained SLM; the training stage's row, on the SLM it trained, is the candidate.
    return list({row["strategy"]: (row, source, where) for row, source, where in found}.values())


def validation_reports(profile: Profile, root: Path | str = ".") -> dict[str, dict]:
    """Every great-expectations report of the tables a run read: questions, samples and each configured training
    stage's tables (SATER's preferences and refusal targets, COREA's warm-up, CITER's token labels...), by name."""
    p = paths(profile, root)
    reports = {name: json.loads(p[f"{name}_report"].read_text()) for name in ("questions", "samples")}
    for stage in trained_stages(profile):
        stage_dir = profile.artifacts(root) / stage
        for path in sorted(stage_dir.glob("*_report.json")):
            reports[f"{stage}/{path.name.removesuffix('_report.json')}"] = json.loads(path.read_text())
    return reports


def stage_log(stage: str, profile: Profile, root: Path | str = ".") -> dict:
    """What a finished stage contributes to its MLflow run: metrics, curves and artifact paths."""
    p = paths(profile, root)
    if stage == "questions":
        q = pd.read_parquet(p["questions"])
        return {"metrics": {f"questions.{s}": int(n) for s, n in q["split"].value_counts().items()},
                "artifacts": [p["questions_report"]]}
    if stage == "zoo":
        summary_path = p["zoo"] / "zoo.json"
        if not summary_path.is_file():
            return {"metrics": {}, "artifacts": [p["zoo"] / "manifest.json"]}
        summary = json.loads(summary_path.read_text())
        metrics = {f"zoo.{role}.{k}": v for role, m in summary["models"].items()
                   for k, v in m.items() if isinstance(v, (int, float))}
        metrics["zoo.param_ratio"] = summary["param_ratio"]
        series = {f"zoo.{role}.loss": json.loads((p["zoo"] / role / "losses.json").read_text())
                  for role in summary["models"]}
        return {"metrics": metrics, "series": series, "artifacts": [summary_path, p["zoo"] / "manifest.json"]}
    if stage == "samples":
        s = pd.read_parquet(p["samples"], columns=["model", "split", "sample_idx", "correct", "n_output_tokens"])
        greedy = s[s["sample_idx"] == 0].groupby(["model", "split"])
        metrics = {f"samples.{m}.{sp}.accuracy": float(v) for (m, sp), v in greedy["correct"].mean().items()}
        metrics.update({f"samples.{m}.{sp}.mean_output_tokens": float(v)
                        for (m, sp), v in greedy["n_output_tokens"].mean().items()})
        return {"metrics": metrics, "artifacts": [p["samples_report"]]}
    if stage == "evaluate":
        result = json.loads((p["eval"] / "metrics.json").read_text())
        metrics = {f"eval.{row['strategy']}.{k}": v for row in result["summary"]
                   for k, v in row.items() if k not in ("strategy", "mode") and isinstance(v, (int, float))}
        metrics.update({f"eval.accuracy_by_difficulty.{m}.d{row['difficulty']}": v
                        for row in result["accuracy_by_difficulty"] for m, v in row.items()
                        if m in ("slm", "llm")})
        return {"metrics": metrics, "artifacts": [p["eval"]]}
    if stage == "corea":
        result = json.loads((p["corea"] / "metrics.json").read_text())
        metrics = {f"{row['model']}/{row['domain']}/{k}": v for row in result["rows"]
                   for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        metrics.update({f"corea/targets/{name}": t["value"] for name, t in result["targets"].items()})
        series = {f"{run}/train/{k}": v for run, s in result["training"].items()
                  for k, v in {"loss": s["losses"], **s.get("rewards", {})}.items()}
        return {"metrics": metrics, "series": series,
                "artifacts": [p["corea"] / "report.md", p["corea"] / "metrics.json", p["corea"] / "eval"]}
    if stage == "sater":  # Tracker.metrics leaves out what MLflow cannot log (booleans, undefined figures)
        result = json.loads((p["sater"] / "metrics.json").read_text())
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
                "artifacts": [p["sater"] / "report.md", p["sater"] / "metrics.json", p["sater"] / "eval",
                              *sorted(p["sater"].glob("*.png"))]}
    if stage == "citer":
        from escalate.citer.stage import citer_log

        return citer_log(profile, root)
    raise KeyError(f"unknown stage {stage!r}; known: {', '.join(STAGES + TRAINING_STAGES)}")

