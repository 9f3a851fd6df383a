"""Wall time of each pipeline stage of a profile, from a clean copy of the project (empty DVC cache).

    .venv/bin/python bench/pipeline_timing.py --profile tiny      # about 40 minutes on 2 cores
    .venv/bin/python bench/pipeline_timing.py --profile tiny --keep /tmp/run   # and keep its artifacts

Runs the same `escalate` subcommands `dvc repro` runs (no Prefect, no MLflow), so the figures are
the stages' own cost; `time make demo` adds Prefect start-up, tracking and registration (the training
stages run for a profile with their section, as in the flow). Writes
bench/results/pipeline_<profile>.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from escalate.config import load_profile
from escalate.stages.registry import enabled_stages

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--keep", type=Path, default=None,
                        help="copy the run's artifacts/ here (to compare with a cached run: same machine, same bytes)")
    args = parser.parse_args()
    escalate = Path(sys.executable).with_name("escalate")
    profile = load_profile(args.profile, ROOT)
    stages = {stage.name: stage.command for stage in enabled_stages(profile)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("configs", "zoo"):  # the profiles, and the shipped zoos their zoo stage copies
            shutil.copytree(ROOT / name, Path(tmp) / name)
        for stage, cmd in stages.items():
            start = time.perf_counter()
            subprocess.run([str(escalate), *cmd, "--profile", args.profile], cwd=tmp, check=True,
                           env={**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")})
            rows.append((stage, time.perf_counter() - start))
        if args.keep is not None:
            shutil.copytree(Path(tmp) / "artifacts", args.keep, dirs_exist_ok=True)
    total = sum(s for _, s in rows)
    lines = [f"# Pipeline stage timings: profile {args.profile}", "",
             f"- machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
             f"- measured: {time.strftime('%Y-%m-%d %H:%M')}", "", "| stage | seconds |", "|---|---|",
             *[f"| {stage} | {sec:.1f} |" for stage, sec in rows], f"| total | {total:.1f} |", ""]
    out = ROOT / "bench" / "results" / f"pipeline_{args.profile}.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
