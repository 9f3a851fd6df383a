"""The pipeline's stages as plain functions: each reads its inputs from disk and writes its outputs.

Each stage is one `escalate` subcommand and one DVC stage (dvc.yaml), so a stage's command is
defined once: `dvc repro` decides what to skip, the Prefect flow runs `dvc repro` stage by stage,
and a person can run any stage by hand. Every table is validated before it is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from escalate.config import Profile
from escalate.data.adapters import get_adapter
from escalate.data.validation import ValidationError, ensure_valid, validate
from escalate.evaluation.cost import from_config
from escalate.evaluation.run import EvalSettings, evaluate
from escalate.models.backends import make_backend
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
    _write_validated(df, "questions", p["questions"], p["questions_report"], numeric_tasks=numeric_tasks(df))
    return p["questions"]


def load_questions(profile: Profile, root: Path | str = ".") -> pd.DataFrame:
    path = paths(profile, root)["questions"]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run `escalate data build --profile {profile.name}` first")
    df = pd.read_parquet(path)
    ensure_valid(df, "questions", source=str(path), numeric_tasks=numeric_tasks(df))
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


def run_evaluation(profile: Profile, root: Path | str = ".") -> dict:
    p = paths(profile, root)
    questions = load_questions(profile, root)
    samples = pd.read_parquet(p["samples"])
    ensure_valid(samples, "samples", source=str(p["samples"]), model_ids=list(profile.models))
    manifest = json.loads((p["zoo"] / "manifest.json").read_text())
    cost = from_config(profile.cost.kind, profile.cost.prices, {r: m.get("n_params") for r, m in manifest.items()})
    ev = profile.evaluation
    settings = EvalSettings(split=ev.split, delta=ev.delta, n_points=ev.n_thresholds, seed=ev.seed, profile=profile.name)
    return evaluate(questions, samples, cost, settings, p["eval"], routers=ev.strategies or None,
                    timings=pd.read_parquet(p["latency"]))


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
    raise KeyError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")
