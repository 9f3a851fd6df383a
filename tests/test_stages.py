"""The stage registry against dvc.yaml: the same stages in the same order, each DVC stage running the stage's
command and listing its outputs; and what the registry drives (which stages a profile runs)."""

from __future__ import annotations

from pathlib import Path

import yaml

from escalate.config import load_profile
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
