"""The SATER stage end to end on the smoke profile: both stages train, their tables validate, metrics are written."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from escalate import stages
from escalate.config import load_profile
from escalate.data.validation import ensure_valid
from tests.checkpoints import weights_changed
from tests.conftest import make_project

METRIC_KEYS = {"tokens_before", "tokens_after", "accuracy_before", "accuracy_after", "token_reduction",
               "token_reduction_claimed", "refusal_rate", "accuracy_when_answering", "tau"}


@pytest.mark.slow
def test_build_sater_trains_both_stages_and_writes_validated_outputs(tmp_path: Path) -> None:
    smoke_project = make_project(tmp_path)
    profile = load_profile("smoke", root=smoke_project)
    for build in (stages.build_questions, stages.build_zoo, stages.build_samples):
        build(profile, smoke_project)
    metrics_path = stages.build_sater(profile, smoke_project)

    out, zoo_slm = stages.paths(profile, smoke_project)["sater"], stages.paths(profile, smoke_project)["zoo"] / "slm"
    assert weights_changed(zoo_slm, out / "stage1")
    assert weights_changed(out / "stage1", out / "stage2")
    for table, name in (("preferences", "preferences"), ("refusal_sft", "refusal_sft"), ("samples", "samples")):
        assert json.loads((out / f"{name}_report.json").read_text())["ok"]
        ensure_valid(pd.read_parquet(out / f"{name}.parquet"), table)
    samples = pd.read_parquet(out / "samples.parquet")
    assert set(samples["model"]) == {"sater1", "sater2"} and set(samples["split"]) == {"test"}
    assert len(samples) == 2 * profile.sampling.k * 24  # both models, K samples, the 24 test questions
    metrics = json.loads(metrics_path.read_text())
    assert METRIC_KEYS <= set(metrics)
    assert metrics["tau"] == profile.sater.refusal.tau and 0 <= metrics["refusal_rate"] <= 1


def test_sater_metrics_compare_greedy_samples() -> None:
    def rows(model: str, texts: list[str], correct: list[bool], tokens: list[int]) -> pd.DataFrame:
        return pd.DataFrame({"model": model, "split": "test", "sample_idx": 0, "text": texts,
                             "correct": correct, "n_output_tokens": tokens})

    vanilla = rows("slm", ["a", "b"], [True, False], [40, 60])
    sater = pd.concat([rows("sater1", ["a", "b"], [True, False], [10, 20]),
                       rows("sater2", [" I don't know; escalating.", "x"], [False, True], [5, 1])])
    m = stages.sater_metrics(vanilla, sater, "test", tau=0.5)
    assert (m["tokens_before"], m["tokens_after"]) == (50, 15)
    assert m["token_reduction"] == pytest.approx(0.7) and m["token_reduction_claimed"]
    assert (m["refusal_rate"], m["accuracy_when_answering"], m["stage2_accuracy"]) == (0.5, 1.0, 0.5)
