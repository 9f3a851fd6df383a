"""The `harvest` flow: the gateway's traffic log -> deduplicated, redacted, validated questions for retraining.

    python -m flows.harvest --profile tiny                     # reads serving/traffic, writes data/harvest/tiny
    python -m flows.harvest --traffic-dir /mnt/traffic --root . # a log on a shared volume

Reads the traffic part files written since the last harvest, writes questions.parquet (the LLM's
answers as labels), unlabelled.parquet and lineage.json under data/harvest/<profile>/ (escalate.harvest
says why), and moves the watermark. A contract failure fails the run and nothing is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from escalate.telemetry import disable_telemetry

disable_telemetry()

from prefect import flow  # noqa: E402

from escalate.config import load_profile  # noqa: E402
from escalate.harvest import harvest_dir  # noqa: E402
from escalate.serving.deployment import SERVING_DIR  # noqa: E402
from escalate.serving.traffic import TRAFFIC_DIR  # noqa: E402
from tasks.harvest import build, collect, publish  # noqa: E402


@flow(name="harvest", log_prints=True)
def harvest(profile: str = "tiny", root: str = ".", traffic_dir: str | None = None) -> dict:
    """Harvest the traffic log into data/harvest/<profile>/; returns the lineage (or "no new traffic")."""
    root_path = Path(root).resolve()
    cfg = load_profile(profile, root_path)  # a bad profile fails here, before any reading
    traffic = Path(traffic_dir) if traffic_dir else root_path / SERVING_DIR / TRAFFIC_DIR
    out_dir = harvest_dir(root_path, profile)
    parts = collect(traffic, out_dir)
    if not parts:
        print(f"no new traffic under {traffic}; nothing harvested")
        return {"outcome": "no-new-traffic", "parts": []}
    lineage = publish(build(parts, out_dir, cfg), traffic, out_dir)
    print(f"harvested {lineage['questions']} labelled and {lineage['unlabelled']} unlabelled questions from "
          f"{len(parts)} part file(s) into {out_dir}")
    return {"outcome": "harvested", **lineage}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.harvest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny", help="profile whose task, splits and limits the questions get")
    parser.add_argument("--root", default=".", help="project root (configs/, serving/, data/)")
    parser.add_argument("--traffic-dir", default=None, help="the gateway's traffic log (default: serving/traffic)")
    args = parser.parse_args(argv)
    print(json.dumps(harvest(profile=args.profile, root=args.root, traffic_dir=args.traffic_dir), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
