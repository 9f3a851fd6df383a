"""One shape for every pipeline stage (RouteLLM's ROUTER_CLS shape applied to stages), and the scaffolding
they share, written once.

A stage is one `escalate` subcommand and one DVC stage (dvc.yaml lists its `outputs` under
artifacts/<profile>/ and runs its `command`): `build` writes the outputs, `log` says what goes to
MLflow, `candidates` which cascades the registry gates, `reports` which validation reports it wrote.
A training stage needs its profile section (`enabled`). Every table is validated before it is written.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import shutil
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
from tqdm.auto import tqdm

from escalate.config import ConfigError, ModelConfig, Profile, SamplingConfig
from escalate.evaluation.cost import CostModel, from_config
from escalate.evaluation.report import format_cell, format_table
from escalate.evaluation.run import EvalSettings, to_json
from escalate.models.backends import make_backend
from escalate.sampling import sample

Candidate = tuple[dict, Profile, Path]  # (summary row, the profile it runs with, the directory it registers from)


class Stage(ABC):
    """A pipeline stage: what it writes, how it runs, what it logs and what it offers the registry."""

    name: ClassVar[str]
    command: ClassVar[tuple[str, ...]]  # the `escalate` subcommand, e.g. ("sater", "train")
    help: ClassVar[str]  # the subcommand's help
    group_help: ClassVar[str] = ""  # the help of the command's group, for a two-word command
    outputs: ClassVar[tuple[str, ...]]  # what it writes under artifacts/<profile>/ (dvc.yaml's outs)

    def enabled(self, profile: Profile) -> bool:
        """Whether the pipeline runs this stage for `profile` (every stage but a training one always does)."""
        return True

    def output_paths(self, profile: Profile, root: Path | str = ".") -> list[Path]:
        return [profile.artifacts(root) / out for out in self.outputs]

    @abstractmethod
    def build(self, profile: Profile, root: Path | str = ".") -> Any:
        """Read the stage's inputs from disk, write its outputs; returns what it wrote (or its results)."""

    @abstractmethod
    def log(self, profile: Profile, root: Path | str = ".") -> dict:
        """What the finished stage contributes to its MLflow run: metrics, series (curves) and artifact paths."""

    def run(self, profile: Profile) -> str:
        """`escalate <command>`: build in the working directory; returns what the command prints."""
        return f"wrote {self.build(profile)}"

    def candidates(self, profile: Profile, root: Path | str = ".") -> list[Candidate]:
        """The cascades of a finished stage that the registry gates and registers; most stages offer none."""
        return []

    def reports(self, profile: Profile, root: Path | str = ".") -> dict[str, Path]:
        """The great-expectations reports of the tables the stage wrote, by name; most stages write none."""
        return {}


class TrainingStage(Stage):
    """A stage that trains the SLM by one method: it needs the profile's section of its name, starts from the
    samples stage's output, writes under artifacts/<profile>/<name>/ and ends with metrics.json and report.md."""

    columns: ClassVar[tuple[str, ...]]  # the results table's columns the command prints

    def enabled(self, profile: Profile) -> bool:
        return getattr(profile, self.name) is not None

    def directory(self, profile: Profile, root: Path | str = ".") -> Path:
        return profile.artifacts(root) / self.name

    def inputs(self, profile: Profile, root: Path | str) -> tuple[Any, dict[str, Path], Path]:
        """The profile section, the pipeline paths and the (emptied, created) output directory; a clear error
        when the profile has no such section or the samples it starts from are missing."""
        cfg = getattr(profile, self.name)
        if cfg is None:
            raise ConfigError(f"profile {profile.name!r} has no {self.name} section; add one to its YAML to train "
                              f"{self.name.upper()}")
        p = paths(profile, root)
        out = self.directory(profile, root)
        shutil.rmtree(out, ignore_errors=True)  # as DVC does before a run: no table or report of an earlier one stays
        out.mkdir(parents=True)
        if not p["samples"].is_file():
            raise FileNotFoundError(f"{p['samples']}: missing; run `escalate sample --profile {profile.name}` first")
        return cfg, p, out

    def run(self, profile: Profile) -> str:
        """The results table, each target with its figure and verdict, and where the report is."""
        metrics = json.loads(self.build(profile).read_text())
        lines = [format_table(metrics["rows"], list(self.columns))]
        lines += [f"{name}: {format_cell(t['value'])} (needs {t['relation']} {t['limit']}): "
                  f"{'met' if t['met'] else 'missed'}" for name, t in metrics["targets"].items()]
        return "\n".join([*lines, f"report: {self.directory(profile) / 'report.md'}"])

    def reports(self, profile: Profile, root: Path | str = ".") -> dict[str, Path]:
        """Every table report in the stage's directory (SATER's preferences, COREA's warm-up, CITER's labels...)."""
        return {f"{self.name}/{path.name.removesuffix('_report.json')}": path
                for path in sorted(self.directory(profile, root).glob("*_report.json"))}


class Progress:
    """A stage's progress bar, one tick per step with what it finished, and the stage's wall time."""

    def __init__(self, name: str, total: int) -> None:
        self.start = time.perf_counter()
        self.bar = tqdm(total=total, desc=name, unit="step", dynamic_ncols=True)

    def step(self, what: str) -> None:
        self.bar.set_postfix_str(what)
        self.bar.update()

    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def close(self) -> None:
        self.bar.close()


def paths(profile: Profile, root: Path | str = ".") -> dict[str, Path]:
    """Where the stages write, under artifacts/<profile>/ (dvc.yaml lists the same paths)."""
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


def write_validated(df: pd.DataFrame, table: str, out: Path, report_path: Path, **rules: object) -> None:
    """Validate, always write the report, and write the table only when it passed."""
    from escalate.data.validation import ValidationError, validate  # great_expectations: seconds, only to write a table

    report = validate(df, table, source=str(out), **rules)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report.to_dict(), indent=2, default=str))
    if not report.ok:
        raise ValidationError(report)
    df.to_parquet(out, index=False)


def read_validated(path: Path, table: str, **rules: object) -> pd.DataFrame:
    """A table another stage wrote, validated again: a file edited or truncated since fails here, by name."""
    from escalate.data.validation import ensure_valid  # great_expectations: seconds to import, see write_validated

    df = pd.read_parquet(path)
    ensure_valid(df, table, source=str(path), **rules)
    return df


METRICS_DIR = "metrics"  # committed, outside artifacts/: dvc.yaml declares each stage's file under `metrics:`


def metrics_file(profile: Profile, stage: str, root: Path | str = ".") -> Path:
    """Where a stage's headline figures live: metrics/<profile>/<stage>.json (`dvc metrics show` reads them)."""
    return Path(root) / METRICS_DIR / profile.name / f"{stage}.json"


def publish_metrics(stage: Stage, profile: Profile, root: Path | str = ".") -> Path:
    """Write the figures the finished stage logs to MLflow as its committed metrics file: flat keys, numbers only
    (an undefined figure as null), sorted so `dvc metrics diff` and `git diff` show what moved."""
    figures = stage.log(profile, root).get("metrics", {})
    kept = {k: _plain_number(v) for k, v in figures.items() if isinstance(v, numbers.Real)}
    path = metrics_file(profile, stage.name, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(sorted(kept.items())), indent=1) + "\n")
    return path


def _plain_number(value: numbers.Real) -> int | float | None:
    if isinstance(value, numbers.Integral):
        return int(value)
    return float(value) if math.isfinite(float(value)) else None


def write_metrics(out: Path, metrics: dict) -> Path:
    """metrics.json in strict JSON (NaN as null); returns its path."""
    path = out / "metrics.json"
    path.write_text(to_json(metrics))
    return path


def numeric_tasks(questions: pd.DataFrame) -> list[str]:
    """Tasks graded as numbers: those whose rows carry no choices."""
    no_choices = questions["choices"].isna() | (questions["choices"].astype(str).str.strip() == "")
    return sorted(questions.loc[no_choices, "task"].astype(str).unique())


def question_rules(profile: Profile, questions: pd.DataFrame) -> dict[str, object]:
    """The questions contract's options under `profile`: one set for the table's writer and every reader."""
    return {"numeric_tasks": numeric_tasks(questions), "max_question_chars": profile.data.max_question_chars,
            "eval_split": profile.evaluation.split}


def load_questions(profile: Profile, root: Path | str = ".") -> pd.DataFrame:
    path = paths(profile, root)["questions"]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run `escalate data build --profile {profile.name}` first")
    from escalate.data.validation import ensure_valid  # great_expectations: seconds to import, see write_validated

    df = pd.read_parquet(path)
    ensure_valid(df, "questions", source=str(path), **question_rules(profile, df))
    return df


def load_samples(profile: Profile, root: Path | str = ".") -> pd.DataFrame:
    """The samples stage's table, validated against the profile's models."""
    return read_validated(paths(profile, root)["samples"], "samples", model_ids=list(profile.models))


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


def sample_once(cfg: ModelConfig, role: str, zoo_dir: Path, questions: pd.DataFrame,
                sampling: SamplingConfig, seed: int) -> pd.DataFrame:
    """The samples table of one model on `questions`, its backend closed afterwards."""
    backend = make_backend(cfg, role, zoo_dir, sampling.batch_size)
    try:
        return sample(backend, questions, role, sampling, seed)
    finally:
        backend.close()


def trained_candidate(profile: Profile, checkpoint: Path, suffix: str) -> Profile:
    """The profile with a trained checkpoint as its SLM, named `<name>-<suffix>` in the registry."""
    base = profile.models["slm"]
    slm = dataclasses.replace(base, name=f"{base.name}-{suffix}", source=str(checkpoint.resolve()))
    return dataclasses.replace(profile, models={**profile.models, "slm": slm})


def summary_candidates(profile: Profile, where: Path, strategies: tuple[str, ...] | None = None) -> list[Candidate]:
    """The rows of an evaluation's summary (metrics.json under `where`) as candidates: all, or `strategies`."""
    rows = json.loads((where / "metrics.json").read_text())["summary"]
    return [(r, profile, where) for r in rows if strategies is None or r["strategy"] in strategies]
