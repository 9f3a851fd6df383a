"""End to end: the Prefect flow `retrain` on the smoke profile, into a temporary MLflow store."""

from __future__ import annotations

import json
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


TRAINING = ("sater", "corea", "citer")


def _set_gates(project: Path, **limits: float) -> dict:
    """Change the profile's gate limits (no DVC stage reads them, so no stage reruns) and leave its training
    sections out, so a run registers only the evaluate stage's candidates; returns the sections left out."""
    path = project / "configs/smoke.yaml"
    profile = yaml.safe_load(path.read_text())
    profile["gates"].update(limits)
    left_out = {k: profile.pop(k) for k in TRAINING if k in profile}
    path.write_text(yaml.safe_dump(profile))
    return left_out


def test_retrain_smoke_end_to_end(prefect_harness, mlflow_uri: str, smoke_project: Path) -> None:
    from escalate.cli import main as cli
    from escalate.registry.aliases import Registry
    from flows.retrain import retrain

    result = retrain(profile="smoke", root=str(smoke_project), tracking_uri=mlflow_uri)
    client = MlflowClient(tracking_uri=mlflow_uri)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert "eval.LLM-only.accuracy" in run.data.metrics and "eval.entropy.cost" in run.data.metrics
    assert run.data.params["profile"] == "smoke"
    assert run.data.tags["git.commit"]
    # the DVC hashes are params (the compare view's), not tags: the run's Tags box keeps what a filter needs
    assert any(k.startswith("dvc.artifacts/smoke/samples.parquet") for k in run.data.params), run.data.params
    assert not [k for k in run.data.tags if k.startswith("dvc.")], run.data.tags
    # the tables the run read are its dataset inputs, digest their DVC hash (the run page's Datasets)
    inputs = {i.dataset.name: i.dataset.digest for i in run.inputs.dataset_inputs}
    assert inputs["artifacts/smoke/samples.parquet"] == run.data.params["dvc.artifacts/smoke/samples.parquet"]
    assert "artifacts/smoke/sater/preferences.parquet" in inputs
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    names = {c.info.run_name for c in children}
    assert names >= {"questions", "zoo", "samples", "evaluate", "sater", "corea", "citer", "candidate-entropy",
                     "candidate-random", "candidate-corea_confidence", "candidate-sater_refusal",
                     "candidate-sater_pregen", "candidate-sater_vote", "candidate-citer"}
    sater_run = next(c for c in children if c.info.run_name == "sater")
    assert "sater/sater/sater_refusal/saving_at_iso_accuracy" in sater_run.data.metrics
    assert "sater/report.md" in {a.path for a in client.list_artifacts(sater_run.info.run_id, "sater")}
    evaluate_run = next(c for c in children if c.info.run_name == "evaluate")
    logged = {a.path for a in client.list_artifacts(evaluate_run.info.run_id, "evaluate")}
    assert "evaluate/report.md" in logged and "evaluate/accuracy_vs_cost.png" in logged
    zoo_run = next(c for c in children if c.info.run_name == "zoo")
    assert len(client.get_metric_history(zoo_run.info.run_id, "zoo.slm.loss")) == 12  # the loss curve

    # Every strategy is registered with its gate results; the objective's pick is @champion and
    # answered in a fresh process (the load gate); the version traces to its run, data and code.
    registry = Registry(mlflow_uri, "escalate-cascade-smoke")  # smoke registers under its own model
    first = registry.champion()
    # smoke's 3 strategies, SATER's 3, COREA's cascade and CITER's, each on the SLM it was evaluated with
    assert first is not None and len(registry.list_versions()) == 8
    slm_of = {v["strategy"]: registry.version(v["version"]).tags["escalate.slm"] for v in registry.list_versions()}
    assert slm_of["corea_confidence"] == "zoo-slm-smoke-corea" and slm_of["entropy"] == "zoo-slm-smoke"
    assert {slm_of[s] for s in ("sater_refusal", "sater_pregen", "sater_vote")} == {"zoo-slm-smoke-sater"}
    assert slm_of["citer"] == "zoo-slm-smoke"  # the zoo SLM writes, its token router calls the zoo LLM
    # per-gate details and lineage are on the version's run (gates.json, lineage.json), read by the registry
    first_gates = {g.name: g for g in registry.gates(first)}
    assert first.tags["gates.passed"] == "true" and first_gates["bundle_load"].tag_value().startswith("pass")
    # the data gate covers every table the run read, the training stages' own included
    assert all(t in first_gates["data_validation"].tag_value() for t in ("questions", "sater/preferences", "citer/"))
    assert first.tags["git.commit"] and registry.lineage(first)["dvc.artifacts/smoke/questions.parquet"]
    assert client.get_run(first.run_id).data.tags["mlflow.parentRunId"] == run.info.run_id
    # the flow's run names the versions it registered and the champion
    linked = client.get_run(run.info.run_id).data.tags
    assert f"escalate-cascade-smoke/{first.version}" in linked["escalate.registered"].split(", ")
    assert linked["escalate.champion"] == f"escalate-cascade-smoke/{first.version}"
    # ...and its page's "Registered models" lists them: its output models' mlflow.modelVersions tags name them
    outputs = client.get_run(run.info.run_id).outputs.model_outputs
    listed = {v["version"] for m in outputs
              for v in json.loads(client.get_logged_model(m.model_id).tags.get("mlflow.modelVersions", "[]"))}
    assert listed == {v["version"] for v in registry.list_versions()} and str(first.version) in listed

    # A second run with unchanged inputs reuses every stage (the checkpoint is not rewritten); its
    # candidates face a gate they cannot pass: registered, rejected with reasons, @champion stays. It and the
    # third run leave the training stages out: the gating decisions are the point, and each candidate costs a
    # bundle and a fresh-process load.
    weights = smoke_project / "artifacts/smoke/zoo/slm/model.safetensors"
    before = weights.stat().st_mtime_ns
    left_out = _set_gates(smoke_project, min_saving=0.99)
    second = retrain(profile="smoke", root=str(smoke_project), tracking_uri=mlflow_uri)
    assert weights.stat().st_mtime_ns == before
    assert all(not r.passed for r in second["registrations"].values())
    rejected = registry.version(second["registrations"]["entropy"].version)
    assert rejected.tags["gates.passed"] == "false" and "cost_saving" in rejected.tags["gates.failed"]
    assert "0.99" in rejected.description or "0.99" in {g.name: g for g in registry.gates(rejected)}[
        "cost_saving"].tag_value()
    assert registry.champion().version == first.version

    # A third run that passes takes @champion; rollback puts the first champion back, with who and why.
    _set_gates(smoke_project, min_saving=0.10)
    retrain(profile="smoke", root=str(smoke_project), tracking_uri=mlflow_uri)
    third = registry.champion()
    assert int(third.version) > int(second["registrations"]["entropy"].version)
    assert cli(["registry", "rollback", "--tracking-uri", mlflow_uri, "--name", registry.name, "--reason", "test rollback",
                "--by", "ci"]) == 0
    restored = registry.champion()
    assert restored.version == first.version
    assert "test rollback" in str(registry.version(third.version).tags) + str(restored.tags)

    # A scheduled run on unchanged data records "no change" and registers nothing (the training sections are
    # back: the champion restored above is from the first run, which had them).
    path = smoke_project / "configs/smoke.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **left_out}))
    count = len(registry.list_versions())
    skipped = retrain(profile="smoke", root=str(smoke_project), tracking_uri=mlflow_uri, skip_if_unchanged=True)
    assert skipped["outcome"] == "no-change"
    assert client.get_run(skipped["run_id"]).data.tags["escalate.outcome"] == "no-change"
    assert client.get_run(skipped["run_id"]).data.params["dvc.artifacts/smoke/questions.parquet"]
    assert len(registry.list_versions()) == count


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
