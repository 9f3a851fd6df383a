"""Harvest tasks: find the traffic not harvested yet, build and validate its questions, publish them.

Reading is retried (a part file may be mid-rename on a shared volume); building is pure, and
publishing moves the watermark last, so neither needs a retry to be safe.
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from escalate import harvest
from escalate.config import Profile


@task(name="collect-traffic", retries=2, retry_delay_seconds=5)
def collect(traffic_dir: Path, out_dir: Path) -> list[Path]:
    """The traffic part files written since the last harvest."""
    parts = harvest.collect(traffic_dir, out_dir)
    get_run_logger().info("%d new traffic part file(s) under %s", len(parts), traffic_dir)
    return parts


@task(name="build-questions")
def build(parts: list[Path], out_dir: Path, cfg: Profile) -> harvest.Harvest:
    """Deduplicated, split and validated tables; a contract failure fails the task with its report."""
    built = harvest.build(parts, out_dir, cfg)
    get_run_logger().info("%d rows read, %d dropped as inadmissible: %d labelled, %d unlabelled questions",
                          built.rows_read, built.dropped, len(built.labelled), len(built.unlabelled))
    return built


@task(name="publish-harvest")
def publish(built: harvest.Harvest, traffic_dir: Path, out_dir: Path) -> dict:
    """Write the tables and lineage.json, then advance the watermark."""
    return harvest.publish(built, traffic_dir, out_dir)
