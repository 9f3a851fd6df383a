"""Tracker: runs a killed retrain left RUNNING are marked failed by the next run of the profile."""

from __future__ import annotations

from pathlib import Path

from escalate.tracking import Tracker


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
