"""The SATER stage end to end on the smoke profile: both stages train, their tables validate, metrics are written."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from escalate import stages
from escalate.config import load_profile
from escalate.data.validation import ensure_valid
from escalate.sater.stage import build_sater, sater_candidate
from escalate.stages.registry import STAGES, stage_log
from tests.checkpoints import weights_changed
from tests.conftest import make_project

STAGE1_KEYS = {"tokens_before", "tokens_after", "accuracy_before", "accuracy_after", "token_reduction",
               "token_reduction_claimed"}


@pytest.mark.slow
def test_build_sater_trains_both_stages_and_writes_validated_outputs(tmp_path: Path) -> None:
    smoke_project = make_project(tmp_path)
    profile = load_profile("smoke", root=smoke_project)
    for build in (STAGES["questions"].build, STAGES["zoo"].build, STAGES["samples"].build):
        build(profile, smoke_project)
    metrics_path = build_sater(profile, smoke_project)

    out, zoo_slm = stages.paths(profile, smoke_project)["sater"], stages.paths(profile, smoke_project)["zoo"] / "slm"
    assert weights_changed(zoo_slm, out / "stage1")
    assert weights_changed(out / "stage1", out / "stage2")
    assert weights_changed(out / "stage1", out / "sweep" / "tau_1")  # the sweep's τ trains a model of its own
    for table, name in (("preferences", "preferences"), ("refusal_sft", "refusal_sft"),
                        ("refusal_sft", "refusal_sft_tau1"), ("samples", "samples"), ("samples", "train_samples")):
        assert json.loads((out / f"{name}_report.json").read_text())["ok"]
        ensure_valid(pd.read_parquet(out / f"{name}.parquet"), table)
    samples = pd.read_parquet(out / "samples.parquet")
    per_model = samples.groupby("model").size().to_dict()
    # stage I: greedy on the 24 test questions; the candidate: K samples on calib + test; the sweep: greedy
    assert per_model == {"sater1": 24, "sater2": profile.sampling.k * 48, "sater2_tau1": 48}

    metrics = json.loads(metrics_path.read_text())
    assert STAGE1_KEYS <= set(metrics["stage1"]) and metrics["context"]["tau"] == profile.sater.refusal.tau
    assert [row["tau"] for row in metrics["sweep"]] == [0.5, 1.0]
    assert {(r["slm"], r["strategy"]) for r in metrics["rows"]} == {
        ("vanilla", "p_true_token"), ("vanilla", "self_consistency"),
        ("sater", "sater_refusal"), ("sater", "sater_pregen"), ("sater", "sater_vote")}
    assert set(metrics["targets"]) == {"token_reduction", "accuracy_drop", "arol_cut", "agl_cut", "saving"}
    report = (out / "report.md").read_text()
    assert "Targets (issue 4)" in report and "the τ sweep" in report
    for plot in ("accuracy_vs_cost.png", "accuracy_vs_call_rate.png", "tau_sweep.png"):
        assert (out / plot).stat().st_size > 0
    for where in ("vanilla", "sater", "tau_1"):
        assert (out / "eval" / where / "metrics.json").is_file()

    logged = stage_log("sater", profile, smoke_project)
    assert all(key.startswith("sater/") for key in logged["metrics"])
    assert "sater/sater/sater_refusal/saving_at_iso_accuracy" in logged["metrics"]
    assert set(logged["series"]) == {"sater/train/stage1/loss", "sater/train/stage2/loss"}

    candidate, eval_dir = sater_candidate(profile, smoke_project)
    assert Path(candidate.models["slm"].source) == (out / "stage2").resolve() and eval_dir == out / "eval" / "sater"
    assert candidate.models["slm"].name.endswith("-sater")
