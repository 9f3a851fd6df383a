"""The zoo stage: train the embedded models (sources 'zoo'); record external ones in the manifest either way.

Run: `escalate zoo build --profile tiny` (or `dvc repro zoo@tiny`). Writes artifacts/<profile>/zoo/:
manifest.json (every model: name, source, backend, parameter count) and, for a profile with a `zoo:`
section, the tokenizer, slm/ and llm/ checkpoints, their losses and zoo.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from escalate.config import Profile
from escalate.stages.base import Stage, load_questions, paths


class ZooStage(Stage):
    name = "zoo"
    command = ("zoo", "build")
    help = "train the tokenizer, SLM and LLM from config (tiny, smoke)"
    group_help = "the embedded models"
    outputs = ("zoo",)

    def build(self, profile: Profile, root: Path | str = ".") -> Path:
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

    def log(self, profile: Profile, root: Path | str = ".") -> dict:
        zoo = paths(profile, root)["zoo"]
        summary_path = zoo / "zoo.json"
        if not summary_path.is_file():
            return {"metrics": {}, "artifacts": [zoo / "manifest.json"]}
        summary = json.loads(summary_path.read_text())
        metrics = {f"zoo.{role}.{k}": v for role, m in summary["models"].items()
                   for k, v in m.items() if isinstance(v, (int, float))}
        metrics["zoo.param_ratio"] = summary["param_ratio"]
        series = {f"zoo.{role}.loss": json.loads((zoo / role / "losses.json").read_text())
                  for role in summary["models"]}
        return {"metrics": metrics, "series": series, "artifacts": [summary_path, zoo / "manifest.json"]}
