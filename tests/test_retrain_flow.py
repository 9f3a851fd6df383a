"""End to end: the Prefect flow `retrain` on the smoke profile, into a temporary MLflow store."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import make_project

pytestmark = pytest.mark.slow


def _runs(uri: str, name: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("escalate")
    return client.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{name}'") if exp else []


def test_retrain_smoke_end_to_end(prefect_harness, mlflow_uri: str, smoke_project: Path) -> None:
    from flows.retrain import retrain

    result = retrain(profile="smoke", root=str(smoke_project), tracking_uri=mlflow_uri)
    client = MlflowClient(tracking_uri=mlflow_uri)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert "eval.p_true_token.apgr" in run.data.metrics or "eval.LLM-only.accuracy" in run.data.metrics
    assert run.data.params["profile"] == "smoke"
    assert run.data.tags["git.commit"]
    assert any(k.startswith("dvc.artifacts/smoke/samples.parquet") for k in run.data.tags), run.data.tags
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert {c.info.run_name for c in children} >= {"questions", "zoo", "samples", "evaluate"}
    evaluate_run = next(c for c in children if c.info.run_name == "evaluate")
    logged = {a.path for a in client.list_artifacts(evaluate_run.info.run_id, "evaluate")}
    assert "evaluate/report.md" in logged and "evaluate/accuracy_vs_cost.png" in logged
    zoo_run = next(c for c in children if c.info.run_name == "zoo")
    assert len(client.get_metric_history(zoo_run.info.run_id, "zoo.slm.loss")) == 12  # the loss curve

    # A second run with unchanged inputs reuses every stage: the checkpoint is not rewritten.
    weights = smoke_project / "artifacts/smoke/zoo/slm/model.safetensors"
    before = weights.stat().st_mtime_ns
    retrain(profile="smoke", root=str(smoke_project), tracking_uri=mlflow_uri)
    assert weights.stat().st_mtime_ns == before


def test_retrain_stops_on_bad_data_and_runs_nothing_downstream(
    prefect_harness, mlflow_uri: str, tmp_path: Path
) -> None:
    from flows.retrain import retrain

    project = make_project(tmp_path)
    bad = pd.DataFrame({"q": ["What is 1+1?", "What is 2+2?", ""], "a": ["2", "four", "6"], "id": ["a", "a", "c"]})
    bad.to_csv(project / "bad.csv", index=False)
    profile = yaml.safe_load((project / "configs/smoke.yaml").read_text())
    profile["data"] = {"adapter": "table", "path": "bad.csv", "task": "arith",
                       "columns": {"question": "q", "answer": "a"}}
    profile["name"] = "smoke"
    (project / "configs/smoke.yaml").write_text(yaml.safe_dump(profile))

    with pytest.raises(Exception, match="questions@smoke failed"):
        retrain(profile="smoke", root=str(project), tracking_uri=mlflow_uri)
    report = (project / "artifacts/smoke/questions_report.json").read_text()
    assert '"a"' in report and "question" in report and "answer" in report  # names rows and columns
    assert not (project / "artifacts/smoke/questions.parquet").exists()
    assert not (project / "artifacts/smoke/zoo").exists()  # nothing downstream ran
    failed = [r for r in _runs(mlflow_uri, "retrain-smoke") if r.info.status == "FAILED"]
    assert failed, "the flow's MLflow run is marked FAILED"
    shutil.rmtree(project / "artifacts", ignore_errors=True)
