"""MLflow logging tasks: I/O, so they retry; each stage's figures and input tables go to a nested run."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from escalate.config import Profile
from escalate.stages.registry import stage_log
from escalate.tracking import Tracker, stage_tables


@task(name="log-stage", retries=2, retry_delay_seconds=2, task_run_name="log-{stage}")
def log_stage(tracker: Tracker, parent_id: str, stage: str, profile: Profile, root: str) -> dict:
    """Log a finished stage's metrics, curves, artifacts and input tables to a nested run under the flow's run
    (the tables and metrics to the flow's run too, so its page lists every table the run read)."""
    record = stage_log(stage, profile, root)
    run_id = tracker.start(stage, tags={"escalate.stage": stage}, parent_id=parent_id)
    tables = stage_tables(Path(root), profile.name, stage, profile.data.path if stage == "questions" else None)
    tracker.inputs(run_id, tables)
    tracker.inputs(parent_id, tables)
    tracker.metrics(run_id, record.get("metrics", {}))
    tracker.metrics(parent_id, record.get("metrics", {}))
    for key, values in record.get("series", {}).items():
        tracker.series(run_id, key, values)
    for path in record.get("artifacts", []):
        tracker.artifacts(run_id, Path(path), artifact_path=stage)
    tracker.end(run_id, ok=True)
    get_run_logger().info("logged %s: %d metrics", stage, len(record.get("metrics", {})))
    return record
