"""The samples stage: K generations per question per model (sample 0 greedy), graded, and each model's latency.

Run: `escalate sample --profile tiny` (or `dvc repro samples@tiny`). Writes artifacts/<profile>/:
samples.parquet (validated; samples_report.json) and latency.parquet.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from escalate.config import Profile
from escalate.models.backends import make_backend
from escalate.prompts import format_prompt
from escalate.sampling import measure_latency, sample
from escalate.stages.base import Stage, load_questions, paths, write_validated


class SamplesStage(Stage):
    name = "samples"
    command = ("sample",)
    help = "K generations per question per model into the samples table"
    outputs = ("samples.parquet", "samples_report.json", "latency.parquet")

    def build(self, profile: Profile, root: Path | str = ".") -> Path:
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
        write_validated(samples, "samples", p["samples"], p["samples_report"], model_ids=list(profile.models))
        return p["samples"]

    def log(self, profile: Profile, root: Path | str = ".") -> dict:
        p = paths(profile, root)
        s = pd.read_parquet(p["samples"], columns=["model", "split", "sample_idx", "correct", "n_output_tokens"])
        greedy = s[s["sample_idx"] == 0].groupby(["model", "split"])
        metrics = {f"samples.{m}.{sp}.accuracy": float(v) for (m, sp), v in greedy["correct"].mean().items()}
        metrics.update({f"samples.{m}.{sp}.mean_output_tokens": float(v)
                        for (m, sp), v in greedy["n_output_tokens"].mean().items()})
        return {"metrics": metrics, "artifacts": [p["samples_report"]]}

    def reports(self, profile: Profile, root: Path | str = ".") -> dict[str, Path]:
        return {"samples": paths(profile, root)["samples_report"]}
