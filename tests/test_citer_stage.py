"""The CITER stage end to end on the smoke profile: labels validate, both routers load, the sweep, the
comparison with the evaluate stage's strategies, the report and the MLflow run are written; and its
token-level cascade registers as one more gated candidate."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from escalate import stages
from escalate.citer import STRATEGY
from escalate.citer.decode import TokenLevelDecoder
from escalate.citer.stage import citer_candidate, citer_dir, log_citer
from escalate.cli import main
from escalate.config import load_profile
from escalate.data.validation import ensure_valid
from escalate.registry import gates
from escalate.registry.aliases import Registry
from escalate.registry.publish import rank_candidates, register_candidate
from escalate.tracking import Tracker

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def citer_outputs(smoke_pipeline: Path) -> Path:
    """`escalate citer train --profile smoke`, run once in the session's smoke project; returns the project."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(smoke_pipeline)
        assert main(["citer", "train", "--profile", "smoke", "--root", str(smoke_pipeline)]) == 0
    return smoke_pipeline


def test_citer_train_writes_validated_labels_routers_sweep_and_report(citer_outputs: Path, mlflow_uri: str) -> None:
    smoke_pipeline = citer_outputs
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

    # The CLI published what MLflow got, with the candidate priced as the registry prices it (metrics/smoke/citer.json)
    published = json.loads((smoke_pipeline / "metrics" / "smoke" / "citer.json").read_text())
    row, _ = citer_candidate(profile, smoke_pipeline)
    assert published["citer/priced/cost"] == pytest.approx(row["cost"]) and published["citer/priced/round"] == row["round"]
    assert published["citer/r2/accuracy"] == pytest.approx(client.get_run(run).data.metrics["citer/r2/accuracy"])
    assert "citer/priced/saving_at_iso_accuracy" in published


def test_the_citer_cascade_registers_as_a_gated_candidate(citer_outputs: Path, mlflow_uri: str) -> None:
    root = citer_outputs
    profile = load_profile("smoke", root=root)
    row, citer_eval = citer_candidate(profile, root)
    metrics = json.loads((citer_eval / "metrics.json").read_text())
    assert row["strategy"] == STRATEGY and row["threshold"] == metrics["rounds"][f"r{row['round']}"]["tau"]
    assert rank_candidates([row], profile.evaluation.delta) == [STRATEGY]
    p = stages.paths(profile, root)
    tracker = Tracker(mlflow_uri, "citer-candidates", root)
    registry = Registry(mlflow_uri, name="citer-candidates")  # its own model: no champion from other tests
    shared = dict(profile=profile, cost=stages.cost_model(profile, root), eval_dir=citer_eval, zoo_dir=p["zoo"],
                  questions=pd.read_parquet(p["questions"]), validation={"questions": True, "samples": True},
                  tracker=tracker, parent_run_id=tracker.start("retrain-smoke"), registry=registry, root=root)

    first = register_candidate(STRATEGY, may_take_champion=True, **shared)
    verdicts = {g.name: g for g in first.gates}
    assert list(verdicts) == list(gates.GATES)
    assert verdicts["accuracy"].figure == pytest.approx(row["accuracy"])
    assert verdicts["cost_saving"].figure == pytest.approx(1 - row["cost"])
    assert verdicts["cost_saving"].passed == (1 - row["cost"] >= profile.gates.min_saving)
    assert verdicts["ece"].passed and "does not apply" in verdicts["ece"].reason
    assert verdicts["regression"].passed and "no current champion" in verdicts["regression"].reason
    assert verdicts["bundle_load"].passed, verdicts["bundle_load"].reason
    assert "answered 2/2 smoke questions in a fresh process" in verdicts["bundle_load"].reason
    assert first.registration.passed == all(g.passed for g in first.gates)
    shown = registry.show(first.registration.version)
    assert (shown["tags"]["escalate.strategy"], shown["tags"]["escalate.kind"]) == (STRATEGY, "token")
    assert float(shown["params"]["threshold"]) == row["threshold"] and shown["params"]["kind"] == "token"

    # With this bundle as champion (registered again behind a passing gate: the smoke figures may fail the
    # cost gate), the next candidate is compared with it query by query on the outcomes the bundle stored.
    registry.register(first.model_uri, [gates.accuracy_gate(1.0, 1.0, 0.0)], may_take_champion=True)
    second = register_candidate(STRATEGY, may_take_champion=False, **shared)
    regression = next(g for g in second.gates if g.name == "regression")
    n = int((pd.read_parquet(p["questions"])["split"] == profile.evaluation.split).sum())
    assert regression.passed and f"over {n} paired queries" in regression.reason and regression.figure == 0.0
