"""The `retrain` flow: questions -> zoo -> samples -> evaluate, tracked in one MLflow run.

Each stage is a DVC stage run by a task, so a second run with unchanged inputs skips finished
stages and a killed run resumes from the last finished one. Run it with:

    python -m flows.retrain --profile tiny
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from escalate.telemetry import disable_telemetry

disable_telemetry()

from prefect import flow, get_run_logger  # noqa: E402

from escalate.config import load_profile  # noqa: E402
from escalate.evaluation.report import format_table  # noqa: E402
from escalate.evaluation.run import SUMMARY_COLUMNS  # noqa: E402
from escalate.stages import STAGES, paths  # noqa: E402
from escalate.tracking import Tracker, dvc_hashes, git_commit  # noqa: E402
from tasks.stages import run_stage  # noqa: E402
from tasks.tracking import log_stage  # noqa: E402


@flow(name="retrain", log_prints=True)
def retrain(profile: str = "tiny", root: str = ".", tracking_uri: str | None = None) -> dict:
    """Run every stage of `profile` and log it to MLflow; returns the evaluation summary."""
    logger = get_run_logger()
    root_path = Path(root).resolve()
    cfg = load_profile(profile, root_path)  # a bad profile fails here, before any work
    tracker = Tracker(tracking_uri or cfg.tracking.uri, cfg.tracking.experiment, root_path)
    run_id = tracker.start(f"retrain-{profile}", tags={"escalate.profile": profile, **git_commit(root_path)})
    tracker.params(run_id, {"profile": profile, **asdict(cfg)})
    ok = False
    try:
        result: dict = {}
        for stage in STAGES:
            run_stage(stage, profile, str(root_path))
            result = log_stage(tracker, run_id, stage, cfg, str(root_path))
        tracker.tags(run_id, dvc_hashes(root_path, profile))
        ok = True
    finally:
        tracker.end(run_id, ok)
    metrics = json.loads((paths(cfg, root_path)["eval"] / "metrics.json").read_text())
    table = format_table(metrics["summary"], list(SUMMARY_COLUMNS))
    report = paths(cfg, root_path)["eval"] / "report.md"
    logger.info("results: profile %s, split %s, seed %s, cost model %s", profile, cfg.evaluation.split,
                cfg.seed, metrics["context"]["cost_model"])
    print(f"\n{table}\n\nreport:    {report}\nMLflow UI: make ui   (then open http://127.0.0.1:5000, run {run_id})")
    return {"run_id": run_id, "metrics": metrics, "stage_log": result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.retrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny", help="profile in configs/ (default: tiny)")
    parser.add_argument("--root", default=".", help="project root (default: .)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: the profile's)")
    args = parser.parse_args(argv)
    retrain(profile=args.profile, root=args.root, tracking_uri=args.tracking_uri)
    return 0


if __name__ == "__main__":
    sys.exit(main())
