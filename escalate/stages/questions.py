"""The questions stage: generate or load the questions, validate them, write them.

Run: `escalate data build --profile tiny` (or `dvc repro questions@tiny`). Writes
artifacts/<profile>/questions.parquet and its validation report questions_report.json.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from escalate.config import Profile
from escalate.data.adapters import get_adapter
from escalate.stages.base import Stage, paths, question_rules, write_validated


class QuestionsStage(Stage):
    name = "questions"
    command = ("data", "build")
    help = "build and validate the questions table"
    group_help = "questions and table validation"
    outputs = ("questions.parquet", "questions_report.json")

    def build(self, profile: Profile, root: Path | str = ".") -> Path:
        p = paths(profile, root)
        df = get_adapter(profile.data.adapter).load(profile.data, profile.seed)
        write_validated(df, "questions", p["questions"], p["questions_report"], **question_rules(profile, df))
        return p["questions"]

    def log(self, profile: Profile, root: Path | str = ".") -> dict:
        p = paths(profile, root)
        q = pd.read_parquet(p["questions"])
        return {"metrics": {f"questions.{s}": int(n) for s, n in q["split"].value_counts().items()},
                "artifacts": [p["questions_report"]]}

    def reports(self, profile: Profile, root: Path | str = ".") -> dict[str, Path]:
        return {"questions": paths(profile, root)["questions_report"]}
