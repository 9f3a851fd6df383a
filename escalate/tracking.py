"""MLflow tracking and lineage: one run per flow run, a nested run per stage.

Runs are addressed by id through `MlflowClient`, never through the "active run" global, so logging
works the same from any thread (Prefect runs tasks in worker threads). Tags tie a run to its git
commit (what a search filters on); the DVC hash of every dataset and checkpoint it read or wrote (from
dvc.lock) goes to its params `dvc.<path>`, which the UI's compare view sets side by side, and
every table a stage reads is logged as an MLflow dataset input (digest: its DVC or content hash), so
the UI's run page and runs table list the data. The experiment is typed as model training; the MLflow
3.17 UI itself picks its GenAI or model-training view per browser, so the links escalate prints carry
MODEL_TRAINING_VIEW (see there).
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import yaml
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.types.utils import _infer_schema

from escalate.config import Profile, load_profile
from escalate.telemetry import disable_telemetry

# The experiment's type, for the API and for UIs that read it. The MLflow 3.17 UI does not: with its
# workflow-navigation flag hard-coded on, it derives the kind from a per-browser "workflow type" (the
# URL's ?workflowType=, else localStorage `mlflow.workflowType_v1`, else "genai"), so a fresh browser
# opens every experiment in the GenAI view (mlflow/server/js/build/static/js/main.c2f5f8d4.js: line 2,
# the provider around column 111930 and flag Z0 `R=()=>!0` near column 116991; line 24 column 49326,
# the kind hook that reads this tag only when Z0 is off). No server setting changes that default.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
# Appended to a UI route (`#/experiments/1/runs/<id>` + this), it opens the page in the model-training view.
MODEL_TRAINING_VIEW = "?workflowType=machine_learning"
TABLE_SUFFIXES = (".parquet", ".csv", ".jsonl")
DATASET_CONTEXT = "mlflow.data.context"  # the input tag the UI shows beside a dataset
_SCHEMA_ROWS = 100  # rows read to infer a table's schema for the UI


def resolve_uri(uri: str | None, root: Path | str, profile: Profile | str | None = None) -> str:
    """The one place a tracking (and registry) URI is decided: `uri` when given (e.g. --tracking-uri),
    else the profile's tracking.uri (a profile name is loaded from root's configs/).

    A relative `sqlite:///mlruns/...` path is made absolute under root, so the child processes and
    commands run from elsewhere reach the same store.
    """
    if uri is None:
        if profile is None:
            raise ValueError("resolve_uri needs a tracking URI or the profile whose tracking.uri to use")
        uri = (load_profile(profile, root) if isinstance(profile, str) else profile).tracking.uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        path = (Path(root) / uri[len(prefix):]).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return prefix + str(path)
    return uri


class Tracker:
    """A thin, thread-safe wrapper over MlflowClient for the runs a flow makes."""

    def __init__(self, uri: str, experiment: str, root: Path) -> None:
        disable_telemetry()
        self.uri = resolve_uri(uri, root)
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            self.experiment_id = found.experiment_id
        else:
            artifacts = (root / "mlruns" / "artifacts").resolve()
            location = artifacts.as_uri() if self.uri.startswith("sqlite") else None
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        self.client.set_experiment_tag(self.experiment_id, *EXPERIMENT_KIND)  # also types stores made before

    def start(self, name: str, tags: dict[str, str] | None = None, parent_id: str | None = None) -> str:
        tags = dict(tags or {})
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
        return self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id

    def params(self, run_id: str, params: dict[str, Any]) -> None:
        for key, value in flatten(params).items():
            self.client.log_param(run_id, key, str(value)[:6000])

    def metrics(self, run_id: str, metrics: dict[str, Any], step: int | None = None) -> None:
        for key, value in flatten(metrics).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.client.log_metric(run_id, key, float(value), step=step or 0)

    def series(self, run_id: str, key: str, values: list[float], every: int = 1) -> None:
        """A curve (e.g. a loss per step) as one metric with steps, batched."""
        batch = [Metric(key, float(v), 0, i) for i, v in enumerate(values) if i % every == 0]
        for start in range(0, len(batch), 1000):
            self.client.log_batch(run_id, metrics=batch[start : start + 1000])

    def artifacts(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path)
        elif path.is_file():
            self.client.log_artifact(run_id, str(path), artifact_path)

    def inputs(self, run_id: str, tables: Sequence[Table]) -> None:
        """Log tables as the run's dataset inputs (MLflow keeps one input per name and digest, so repeats are no-ops)."""
        if tables:
            self.client.log_inputs(run_id, datasets=[t.dataset_input() for t in tables])

    def tags(self, run_id: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)

    def end(self, run_id: str, ok: bool) -> None:
        self.client.set_terminated(run_id, "FINISHED" if ok else "FAILED")

    def fail_abandoned(self, profile: str, by_run: str) -> list[str]:
        """Mark FAILED the runs of `profile` still RUNNING, and their RUNNING child runs, naming why.

        Called by a retrain run holding the profile's lock: no live process can be writing them, so a
        RUNNING one was left by a process that died without closing it (SIGKILL, a lost machine).
        Returns their ids."""
        def running(where: str) -> list[str]:
            found = self.client.search_runs([self.experiment_id], f"attributes.status = 'RUNNING' and {where}",
                                            max_results=1000)
            return [r.info.run_id for r in found if r.info.run_id != by_run]

        stale = running(f"tags.`escalate.profile` = '{profile}'")
        stale += [c for parent in list(stale) for c in running(f"tags.`mlflow.parentRunId` = '{parent}'")]
        for run_id in stale:
            self.client.set_tag(run_id, "escalate.failure", f"its process ended without closing the run (killed?); "
                                                             f"marked failed by run {by_run}, which holds the lock")
            self.client.set_terminated(run_id, "FAILED")
        return stale


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists become JSON strings."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out


def ui_route(experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI's route (after the server's `/`) to an experiment or one of its runs, in the model-training view."""
    return f"#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "") + MODEL_TRAINING_VIEW


def git_commit(root: Path) -> dict[str, str]:
    """The code's commit and whether the work tree had uncommitted changes."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    commit = git("rev-parse", "HEAD") or "unknown"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"git.commit": commit, "git.dirty": str(dirty).lower()}


def dvc_hashes(root: Path, profile: str) -> dict[str, str]:
    """`dvc.<path>` -> md5 of every out and dep of this profile's stages, read from dvc.lock."""
    hashes = {}
    data_dvc = root / "data.dvc"
    if data_dvc.is_file():  # the external datasets (data/), versioned by `dvc add data`
        for out in (yaml.safe_load(data_dvc.read_text()) or {}).get("outs", []):
            hashes[f"dvc.{out['path']}"] = out.get("md5", "")
    lock = root / "dvc.lock"
    if not lock.is_file():
        return hashes
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    for name, stage in stages.items():
        if not name.endswith(f"@{profile}"):
            continue
        for entry in stage.get("deps", []) + stage.get("outs", []):
            if "md5" in entry and entry["path"].startswith(("artifacts", "data")):
                hashes[f"dvc.{entry['path']}"] = entry["md5"]
    return hashes


@dataclass(frozen=True)
class Table:
    """A table a run read: the MLflow dataset input the UI lists, digest its DVC (or content) hash."""

    name: str  # its path relative to the project root
    path: Path
    digest: str
    context: str  # the stage that read it

    def dataset_input(self) -> DatasetInput:
        source = LocalArtifactDatasetSource(str(self.path.resolve()))
        schema = _table_schema(self.path)
        dataset = Dataset(name=self.name, digest=self.digest, source_type=source._get_source_type(),
                          source=source.to_json(), schema=schema,
                          profile=json.dumps({"num_rows": _num_rows(self.path)}))
        return DatasetInput(dataset, tags=[InputTag(DATASET_CONTEXT, self.context)])


def stage_tables(root: Path, profile: str, stage: str, source: str | None = None) -> list[Table]:
    """Every table stage `stage` of `profile` read: its DVC table deps (hash from dvc.lock), the validated
    tables it wrote into its own directory and trained on (a `<name>_report.json` beside `<name>.parquet`;
    content hash), and `source`, the profile's data file, when given and local."""
    root = Path(root)
    lock = root / "dvc.lock"
    entry = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).get(f"{stage}@{profile}", {}) \
        if lock.is_file() else {}
    tables = [Table(dep["path"], root / dep["path"], dep["md5"], stage) for dep in entry.get("deps", [])
              if dep["path"].endswith(TABLE_SUFFIXES) and "md5" in dep and (root / dep["path"]).is_file()]
    for out in entry.get("outs", []):
        folder = root / out["path"]
        for report in sorted(folder.glob("*_report.json")) if folder.is_dir() else []:
            table = folder / (report.name.removesuffix("_report.json") + ".parquet")
            if table.is_file():
                tables.append(Table(table.relative_to(root).as_posix(), table, file_md5(table), stage))
    if source and (root / source).is_file():
        tables.append(Table(source, root / source, file_md5(root / source), stage))
    return tables


def file_md5(path: Path) -> str:
    """The md5 of a file's bytes: what DVC records for a binary file."""
    digest = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _head(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        batch = next(pq.ParquetFile(path).iter_batches(batch_size=_SCHEMA_ROWS), None)
        return batch.to_pandas() if batch is not None else pq.read_schema(path).empty_table().to_pandas()
    if path.suffix == ".csv":
        return pd.read_csv(path, nrows=_SCHEMA_ROWS)
    return pd.read_json(path, lines=True, nrows=_SCHEMA_ROWS)


def _table_schema(path: Path) -> str | None:
    """The table's MLflow column schema (JSON, as mlflow.data writes it), or None where it cannot be inferred."""
    try:
        with warnings.catch_warnings():  # its hint about integer columns with missing values concerns model inputs
            warnings.simplefilter("ignore", UserWarning)
            return json.dumps({"mlflow_colspec": _infer_schema(_head(path)).to_dict()})
    except (MlflowException, ValueError, TypeError, OSError):
        return None


def _num_rows(path: Path) -> int:
    if path.suffix == ".parquet":
        return pq.ParquetFile(path).metadata.num_rows
    with path.open("rb") as f:
        lines = sum(1 for _ in f)
    return lines - 1 if path.suffix == ".csv" else lines
