"""The CITER stage end to end on the smoke profile: labels validate, both routers load, the sweep, the
comparison with the evaluate stage's strategies, the report and the MLflow run are written."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from escalate.citer.decode import TokenLevelDecoder
from escalate.citer.stage import citer_dir, log_citer
from escalate.cli import main
from escalate.config import load_profile
from escalate.data.validation import ensure_valid


@pytest.mark.slow
def test_citer_train_writes_validated_labels_routers_sweep_and_report(
    smoke_pipeline: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(smoke_pipeline)
    assert main(["citer", "train", "--profile", "smoke", "--root", str(smoke_pipeline)]) == 0
    profile = load_profile("smoke", root=smoke_pipeline)
    out = citer_dir(profile, smoke_pipeline)
    hidden = np.load(out / "hidden_states.npy")
    for r in (1, 2):
        labels = pd.read_parquet(out / f"token_labels_r{r}.parquet")
        ensure_valid(labels, "token_labels")
        assert json.loads((out / f"token_labels_r{r}_report.json").read_text())["ok"]
        assert set(labels["round"]) == {r} and labels["hidden_index"].max() < len(hidden)
        assert labels["id"].nunique() == profile.citer.max_train_questions
    metrics = json.loads((out / "metrics.json").read_text())
    records = pd.read_parquet(out / "records.parquet")
    assert set(records["split"]) == {"calib", "test"} and set(records["round"]) == {1, 2}
    for r in ("r1", "r2"):
        sweep = pd.DataFrame(metrics["rounds"][r]["sweep"])
        assert sweep["threshold"].iloc[0] == 0.0 and sweep["threshold"].iloc[-1] == 1.0
        assert sweep["llm_token_share"].iloc[0] == 1.0 and sweep["llm_token_share"].iloc[-1] == 0.0
    # τ = 0 decodes LLM-only's tokens: its bytes exceed LLM-only's by what the SLM and the router moved.
    assert metrics["rounds"]["r1"]["sweep"][0]["cost"] > 1.0 == metrics["references"]["LLM-only"]["cost"]
    comparison = metrics["comparison"]
    assert comparison["available"] and {row["strategy"] for row in comparison["rows"]} >= {"citer", "p_true_token"}
    assert comparison["llm_only_bytes_citer"] == pytest.approx(comparison["llm_only_bytes_query_level"], rel=0.05)
    assert {f"r2_{t}" for t in ("accuracy_at_selected_tau", "bytes_at_selected_tau", "bytes_at_iso_accuracy_in_sweep")} \
        <= set(metrics["targets"])
    report = (out / "report.md").read_text()
    assert "CITER round 2" in report and "bytes moved" in report and (out / "accuracy_vs_bytes.png").is_file()

    # The saved router serves from checkpoint directories alone.
    zoo = smoke_pipeline / "artifacts" / "smoke" / "zoo"
    decoder = TokenLevelDecoder.from_checkpoints(zoo / "slm", zoo / "llm", out / "router_r2", metrics["rounds"]["r2"]["tau"])
    assert len(decoder.generate(["Question: Ann has 2 cups. How many cups does Ann have now?\nAnswer:"], 4)[0].sources) >= 1

    run = log_citer(dataclasses.replace(profile, tracking=dataclasses.replace(profile.tracking, uri=mlflow_uri)),
                    smoke_pipeline)
    client = MlflowClient(mlflow_uri)
    assert "citer/r2/accuracy" in client.get_run(run).data.metrics
    assert {a.path for a in client.list_artifacts(run, "citer")} >= {"citer/report.md", "citer/metrics.json"}
