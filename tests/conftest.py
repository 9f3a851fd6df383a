"""Shared, session-scoped fixtures: one Prefect test harness, one MLflow store, one smoke project.

Starting Prefect's ephemeral server and migrating a fresh MLflow SQLite store each cost seconds on
two cores, so a test session pays for each once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from escalate.telemetry import disable_telemetry

disable_telemetry()
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
PROJECT_FILES = ("configs", "escalate", "zoo", "dvc.yaml", "params.yaml")


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite tracking + registry store for the whole session (migrations run once)."""
    path = tmp_path_factory.mktemp("mlruns") / "mlflow.db"
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{path}"
    MlflowClient(tracking_uri=uri).search_experiments()  # runs the migrations now
    return uri


def make_project(dest: Path) -> Path:
    """A copy of the project's pipeline definition in `dest`, as a DVC repo without git."""
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dest / name)
    dvc = Path(sys.executable).with_name("dvc")
    subprocess.run([str(dvc), "init", "--no-scm", "-q"], cwd=dest, check=True)
    subprocess.run([str(dvc), "config", "core.analytics", "false"], cwd=dest, check=True)
    return dest


@pytest.fixture(scope="session")
def bare_gpu_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root whose configs/gpu.yaml is the gpu profile without its method sections (sater, corea, citer):
    what the stages say to a profile that has none."""
    import yaml

    raw = yaml.safe_load((ROOT / "configs" / "gpu.yaml").read_text())
    root = tmp_path_factory.mktemp("bare_gpu")
    (root / "configs").mkdir()
    bare = {k: v for k, v in raw.items() if k not in ("sater", "corea", "citer")}
    (root / "configs" / "gpu.yaml").write_text(yaml.safe_dump(bare, sort_keys=False))
    return root


@pytest.fixture(scope="session")
def smoke_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("project"))


def dvc_repro(project: Path, target: str) -> Path:
    """`dvc repro target` in a project made by make_project, with this venv's escalate on PATH."""
    dvc = Path(sys.executable).with_name("dvc")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run([str(dvc), "repro", "-q", target], cwd=project, check=True, env=env)
    return project


@pytest.fixture(scope="session")
def smoke_pipeline(smoke_project: Path) -> Path:
    """The smoke profile's stages run once through DVC (shared by tests that need its outputs)."""
    return dvc_repro(smoke_project, "evaluate@smoke")


@pytest.fixture(scope="session")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised one-layer Llama checkpoint for the training tests to train."""
    from tests.checkpoints import random_checkpoint

    return random_checkpoint(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="session")
def model_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny random SLM and LLM sharing one tokenizer, for token-level routing (CITER) tests."""
    from tests.checkpoints import random_pair

    return random_pair(tmp_path_factory.mktemp("pair"))


@pytest.fixture(scope="session")
def smoke(smoke_pipeline: Path) -> Path:
    """The smoke profile's outputs (zoo checkpoints, samples, evaluation), built once per session."""
    return smoke_pipeline / "artifacts" / "smoke"
