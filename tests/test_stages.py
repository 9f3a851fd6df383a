"""The stage registry against dvc.yaml: the same stages in the same order, each DVC stage running the stage's
command and listing its outputs; and what the registry drives (which stages a profile runs)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import yaml

from escalate.config import load_profile
from escalate.stages.base import Stage, metrics_file, publish_metrics
from escalate.stages.registry import STAGES, enabled_stages

ROOT = Path(__file__).resolve().parents[1]


def dvc_stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_dvc_yaml_lists_the_registered_stages_in_order() -> None:
    assert list(dvc_stages()) == list(STAGES)


def test_each_dvc_stage_runs_its_command_and_lists_its_outputs() -> None:
    profile = load_profile("tiny", root=ROOT)
    for name, stage in STAGES.items():
        do = dvc_stages()[name]["do"]
        assert do["cmd"] == f"escalate {' '.join(stage.command)} --profile ${{item}}", name
        outs = [next(iter(o)) if isinstance(o, dict) else o for o in do["outs"]]
        assert [o.replace("${item}", profile.name) for o in outs] == \
            [str(p) for p in stage.output_paths(profile)], name
        # the figures the CLI publishes after the stage (metrics/<profile>/<stage>.json), committed, not cached
        assert do["metrics"] == [{f"metrics/${{item}}/{name}.json": {"cache": False}}], name
        assert metrics_file(profile, name) == Path(f"metrics/{profile.name}/{name}.json")


def test_dvc_deps_exist() -> None:
    for name, stage in dvc_stages().items():
        for dep in stage["do"]["deps"]:
            if not dep.startswith("artifacts/"):
                assert (ROOT / dep).exists(), f"{name}: {dep}"


def test_a_profile_runs_the_core_stages_and_its_training_sections() -> None:
    smoke, gpu = load_profile("smoke", root=ROOT), load_profile("gpu", root=ROOT)
    core = ["questions", "zoo", "samples", "evaluate"]
    assert [s.name for s in enabled_stages(gpu)] == core + [s for s in ("sater", "corea", "citer")
                                                            if getattr(gpu, s) is not None]
    assert [s.name for s in enabled_stages(smoke)] == core + [s for s in ("sater", "corea", "citer")
                                                              if getattr(smoke, s) is not None]


class FiguresStage(Stage):
    """A stage that only reports figures, as a finished stage's `log` does."""

    name, command, help, outputs = "figures", ("figures",), "", ()

    def build(self, profile, root="."):
        return None

    def log(self, profile, root="."):
        return {"metrics": {"b.accuracy": np.float64(0.5), "a.n": np.int64(400), "c.auroc": math.nan, "d.met": True,
                            "e.note": "text"}, "artifacts": []}


def test_published_metrics_are_what_mlflow_gets_as_sorted_plain_json(tmp_path: Path) -> None:
    profile = load_profile("tiny", root=ROOT)
    path = publish_metrics(FiguresStage(), profile, tmp_path)
    assert path == tmp_path / "metrics" / "tiny" / "figures.json"
    text = path.read_text()
    assert json.loads(text) == {"a.n": 400, "b.accuracy": 0.5, "c.auroc": None, "d.met": 1}  # no NaN, no text
    assert list(json.loads(text)) == sorted(json.loads(text)) and "NaN" not in text
