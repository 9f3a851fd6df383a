"""Tracker: runs a killed retrain left RUNNING are marked failed by the next run of the profile; the UI routes
escalate prints open in the model-training view."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from escalate.tracking import MODEL_TRAINING_VIEW, Tracker, ui_route


def test_runs_left_running_by_a_dead_process_are_marked_failed(tmp_path: Path) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "escalate", tmp_path)
    killed = tracker.start("retrain-smoke", tags={"escalate.profile": "smoke"})
    child = tracker.start("candidate-entropy", parent_id=killed)
    other = tracker.start("retrain-tiny", tags={"escalate.profile": "tiny"})
    finished = tracker.start("retrain-smoke", tags={"escalate.profile": "smoke"})
    tracker.end(finished, True)
    current = tracker.start("retrain-smoke", tags={"escalate.profile": "smoke"})

    assert sorted(tracker.fail_abandoned("smoke", current)) == sorted([killed, child])
    status = {r: tracker.client.get_run(r).info.status for r in (killed, child, other, finished, current)}
    assert status == {killed: "FAILED", child: "FAILED", other: "RUNNING", finished: "FINISHED", current: "RUNNING"}
    assert "marked failed by run " + current in tracker.client.get_run(killed).data.tags["escalate.failure"]


def test_ui_routes_ask_the_installed_mlflow_ui_for_its_model_training_view() -> None:
    assert ui_route("3") == "#/experiments/3?workflowType=machine_learning"
    assert ui_route("3", "abc") == "#/experiments/3/runs/abc?workflowType=machine_learning"
    # The installed UI's bundle reads that URL parameter before its per-browser default ("genai"); an MLflow
    # upgrade that renames it fails here rather than silently putting the screenshots back in the GenAI view.
    bundles = list((Path(mlflow.__file__).parent / "server/js/build/static/js").glob("main.*.js"))
    if not bundles:
        pytest.skip("this MLflow install ships no UI bundle (mlflow-skinny)")
    code = bundles[0].read_text(encoding="utf-8")
    name, value = MODEL_TRAINING_VIEW.removeprefix("?").split("=")
    assert f'get("{name}")' in code and f'MACHINE_LEARNING="{value}"' in code
    assert 'key:"mlflow.workflowType"' in code  # the per-browser choice the parameter overrides
