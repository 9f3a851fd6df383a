"""Run one pipeline stage through DVC, so unchanged stages are skipped and a killed run resumes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prefect import get_run_logger, task


class StageFailed(RuntimeError):
    """A stage's command exited non-zero; its own error message is in the log above."""


def dvc_command(stage: str, profile: str) -> list[str]:
    """`dvc repro <stage>@<profile>`, with the DVC that lives next to this interpreter."""
    dvc = Path(sys.executable).with_name("dvc")
    return [str(dvc) if dvc.exists() else "dvc", "repro", f"{stage}@{profile}"]


@task(name="stage", task_run_name="{stage}@{profile}")
def run_stage(stage: str, profile: str, root: str) -> str:
    """Reproduce one DVC stage (and anything stale upstream); stream its output; fail loudly."""
    logger = get_run_logger()
    cmd = dvc_command(stage, profile)
    logger.info("running %s in %s", " ".join(cmd), root)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(cmd, cwd=root, env=env)
    if proc.returncode != 0:
        raise StageFailed(f"stage {stage}@{profile} failed (exit {proc.returncode}); "
                          f"nothing downstream ran. Rerun it alone with: {' '.join(cmd)}")
    return stage
