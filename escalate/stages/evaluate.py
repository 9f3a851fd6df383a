"""The evaluate stage: every baseline router's cascade on the held-out split, plots and report.md.

Run: `escalate evaluate --profile tiny` (or `dvc repro evaluate@tiny`). Writes artifacts/<profile>/eval/
(escalate.evaluation.run.evaluate); each strategy of its summary is a registry candidate on the zoo SLM.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from escalate.config import Profile
from escalate.evaluation.report import format_table
from escalate.evaluation.run import SUMMARY_COLUMNS, evaluate
from escalate.models.backends import model_path
from escalate.stages.base import (
    Candidate,
    Stage,
    cost_model,
    eval_settings,
    load_questions,
    load_samples,
    paths,
    summary_candidates,
)


class EvaluateStage(Stage):
    name = "evaluate"
    command = ("evaluate",)
    help = "evaluate every strategy on the held-out split and write the report"
    outputs = ("eval",)

    def build(self, profile: Profile, root: Path | str = ".") -> dict:
        p = paths(profile, root)
        questions = load_questions(profile, root)
        samples = load_samples(profile, root)
        timings = pd.read_parquet(p["latency"])
        # Absolute, so a saved hidden-state probe finds its checkpoint from any working directory.
        slm = model_path(profile.models["slm"], "slm", p["zoo"])
        model_dir = str(Path(slm).resolve()) if Path(slm).exists() else slm
        return evaluate(questions, samples, cost_model(profile, root), eval_settings(profile), p["eval"], timings,
                        routers=profile.evaluation.strategies or None, model_dir=model_dir)

    def run(self, profile: Profile) -> str:
        result = self.build(profile)
        return f"{format_table(result['summary'], list(SUMMARY_COLUMNS))}\nreport: {paths(profile)['eval'] / 'report.md'}"

    def log(self, profile: Profile, root: Path | str = ".") -> dict:
        eval_dir = paths(profile, root)["eval"]
        result = json.loads((eval_dir / "metrics.json").read_text())
        metrics = {f"eval.{row['strategy']}.{k}": v for row in result["summary"]
                   for k, v in row.items() if k not in ("strategy", "mode") and isinstance(v, (int, float))}
        metrics.update({f"eval.accuracy_by_difficulty.{m}.d{row['difficulty']}": v
                        for row in result["accuracy_by_difficulty"] for m, v in row.items()
                        if m in ("slm", "llm", "n")})
        return {"metrics": metrics, "artifacts": [eval_dir]}

    def candidates(self, profile: Profile, root: Path | str = ".") -> list[Candidate]:
        """Every strategy of the evaluation's summary, on the zoo SLM."""
        return summary_candidates(profile, paths(profile, root)["eval"])

