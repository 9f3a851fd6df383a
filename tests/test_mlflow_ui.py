"""What a reviewer sees in the MLflow UI, read back through MLflow's client API: the experiment's kind, the
tables a run read as dataset inputs, a version's Markdown gate table, its metrics and few tags, the flow
run's links to its versions, and the champion answering a plain list of questions."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from escalate.cascade import ROLES
from escalate.config import load_profile
from escalate.evaluation.cost import TokenPriceCost
from escalate.registry import gates
from escalate.registry.aliases import CHAMPION, Registry, lineage_tags
from escalate.registry.bundle import (
    BundleError,
    CascadeSpec,
    keep_sys_path,
    local_checkpoint,
    log_bundle,
    questions_frame,
    use_tracking_uri,
)
from escalate.registry.publish import Candidate, headline, link_run, same_data
from escalate.tracking import EXPERIMENT_KIND, Tracker, stage_tables

ROOT = Path(__file__).resolve().parents[1]
PROFILE = load_profile("smoke", ROOT)
SAMPLING = replace(PROFILE.sampling, max_new_tokens=4)  # short answers: this is about plumbing
QUESTIONS = ["Eva has 7 cups. Then gives away 1. How many cups does Eva have now?",
             "Cara has 9 coins. Then gets 5 more. How many coins does Cara have now?"]
ROW = {"strategy": "mean_logprob", "accuracy": 0.75, "cost": 0.4, "auroc": 0.81, "ece": 0.07, "call_rate": 0.3}
# What a version's tags may be: what a search filters on, and nothing per gate or per file.
FILTER_TAGS = {"escalate.strategy", "escalate.kind", "escalate.threshold", "escalate.profile", "escalate.model_id",
               "escalate.llm", "escalate.slm", "git.commit", "gates.passed", "gates.failed",
               "escalate.previous_champion", "escalate.content"}


def test_questions_frame_takes_a_list_a_frame_or_records() -> None:
    listed = questions_frame(QUESTIONS)
    assert list(listed.columns) == ["question"] and list(listed["question"]) == QUESTIONS
    assert list(questions_frame(pd.Series(QUESTIONS))["question"]) == QUESTIONS
    assert list(questions_frame(QUESTIONS[0])["question"]) == QUESTIONS[:1]
    framed = questions_frame(pd.DataFrame({"question": QUESTIONS, "choices": ["a", None]}))
    assert list(framed.columns) == ["question", "choices"]
    assert list(questions_frame([{"question": q} for q in QUESTIONS])["question"]) == QUESTIONS
    assert list(questions_frame({"question": QUESTIONS[0]})["question"]) == QUESTIONS[:1]
    with pytest.raises(BundleError, match="list of question strings"):
        questions_frame(pd.DataFrame({"text": QUESTIONS}))


def test_headline_names_the_figures_reviewers_compare() -> None:
    assert headline(ROW) == pytest.approx({"accuracy": 0.75, "normalized_cost": 0.4, "saving": 0.6,
                                           "auroc": 0.81, "ece": 0.07})
    assert headline({"accuracy": 0.5, "cost": float("nan"), "ece": None}) == {"accuracy": 0.5}
    assert same_data({"dvc.artifacts/smoke/questions.parquet": "h1"}, {"dvc.artifacts/smoke/questions.parquet": "h1"},
                     "smoke")


def test_the_ui_shows_data_gates_metrics_and_links(smoke_pipeline: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, "escalate", smoke_pipeline)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    key, kind = EXPERIMENT_KIND
    assert client.get_experiment(tracker.experiment_id).tags[key] == kind == "custom_model_development"

    # The evaluate stage's tables, digest their DVC hash, on its run and on the flow's run.
    parent = tracker.start("retrain-smoke")
    stage = tracker.start("evaluate", parent_id=parent)
    tables = stage_tables(smoke_pipeline, "smoke", "evaluate")
    tracker.inputs(stage, tables)
    tracker.inputs(parent, tables)
    tracker.inputs(parent, tables)  # a second stage reading the same tables adds nothing
    lock = yaml.safe_load((smoke_pipeline / "dvc.lock").read_text())["stages"]["evaluate@smoke"]
    hashes = {d["path"]: d["md5"] for d in lock["deps"]}
    for run_id in (stage, parent):
        inputs = client.get_run(run_id).inputs.dataset_inputs
        found = {i.dataset.name: i for i in inputs}
        assert set(found) == {"artifacts/smoke/questions.parquet", "artifacts/smoke/samples.parquet",
                              "artifacts/smoke/latency.parquet"} and len(inputs) == 3
        questions = found["artifacts/smoke/questions.parquet"]
        assert questions.dataset.digest == hashes["artifacts/smoke/questions.parquet"]
        assert str(smoke_pipeline / "artifacts/smoke/questions.parquet") in questions.dataset.source
        assert '"question"' in questions.dataset.schema and '"num_rows": 88' in questions.dataset.profile
        assert [(t.key, t.value) for t in questions.tags] == [("mlflow.data.context", "evaluate")]

    # A candidate bundle, gated and registered: the description tabulates the gates, the figures are metrics.
    smoke = smoke_pipeline / "artifacts" / "smoke"
    candidate_run = tracker.start("candidate-mean_logprob", parent_id=parent)
    cost = TokenPriceCost({r: tuple(p) for r, p in PROFILE.cost.prices.items()})
    spec = CascadeSpec("mean_logprob", 0.04845, PROFILE.models["slm"], PROFILE.models["llm"], cost, SAMPLING,
                       PROFILE.seed, "smoke")
    checkpoints = {role: local_checkpoint(PROFILE.models[role], role, smoke / "zoo") for role in ROLES}
    info = log_bundle(spec, tracking_uri=uri, run_id=candidate_run, checkpoints=checkpoints, eval_dir=smoke / "eval",
                      metrics={**ROW, **headline(ROW)}, example_questions=QUESTIONS[:1])
    verdicts = [gates.data_validation_gate({"questions": True}), gates.accuracy_gate(0.75, 0.76, 0.02),
                gates.cost_saving_gate(0.4, 0.1), gates.ece_gate(0.07, True, 0.1)]
    registry = Registry(uri)
    registration = registry.register(info.model_uri, verdicts, run_id=info.run_id, model_id=info.model_id,
                                     tags=info.tags(), figures=headline(ROW), report="artifacts/eval/report.md",
                                     lineage=lineage_tags(smoke_pipeline, "smoke", info.run_id, parent))
    mv = client.get_model_version(registry.name, registration.version)
    assert "**Every gate passed.**" in mv.description and "| gate | verdict | figure | limit | reason |" in mv.description
    assert "| cost_saving | pass | 0.6 | 0.1 | cost saving 0.6000" in mv.description
    assert "accuracy 0.75 · normalized cost 0.4 · saving 0.6 · AUROC 0.81 · ECE 0.07" in mv.description
    assert f"(#/experiments/{tracker.experiment_id}/models/{info.model_id}/artifacts)" in mv.description
    assert set(mv.tags) <= FILTER_TAGS and mv.tags["gates.passed"] == "true" and mv.tags["git.commit"]
    assert mv.run_id == info.run_id

    # Figures and gate figures are metrics of the logged model (the UI's compare view) and of the run.
    model_metrics = {m.key: m.value for m in client.get_logged_model(info.model_id).metrics}
    for name in ("accuracy", "normalized_cost", "saving", "auroc", "ece", "gate.cost_saving", "gate.ece"):
        assert name in model_metrics and name in client.get_run(info.run_id).data.metrics, name
    assert model_metrics["saving"] == pytest.approx(0.6) and model_metrics["gates.passed"] == 1.0

    # Per-gate details and lineage live in JSON artifacts on the run, and the registry reads them back.
    artifacts = {a.path for a in client.list_artifacts(info.run_id, "registration")}
    assert artifacts == {"registration/gates.json", "registration/lineage.json"}
    shown = registry.show(registration.version)
    assert shown["gates"] == verdicts
    assert shown["lineage"]["dvc.artifacts/smoke/questions.parquet"] == hashes["artifacts/smoke/questions.parquet"]
    assert shown["lineage"]["escalate.parent_run_id"] == parent
    assert same_data(registry.lineage(registry.champion()), {"dvc.artifacts/smoke/questions.parquet":
                                                             hashes["artifacts/smoke/questions.parquet"]}, "smoke")

    # The flow's run names its versions and champion, links them in its description, and lists their models.
    linked = link_run(tracker, parent, registry, [Candidate("mean_logprob", registration, info.model_uri, verdicts)])
    run = client.get_run(parent)
    assert run.data.tags["escalate.registered"] == f"escalate-cascade/{registration.version}" == linked[
        "escalate.registered"]
    assert run.data.tags["escalate.champion"] == f"escalate-cascade/{registration.version}"
    assert f"(#/models/escalate-cascade/versions/{registration.version})" in run.data.tags["mlflow.note.content"]
    assert [m.model_id for m in run.outputs.model_outputs] == [info.model_id]
    # The UI's "Registered models" on the flow's run: the versions its output models' mlflow.modelVersions name.
    linked_versions = json.loads(client.get_logged_model(info.model_id).tags["mlflow.modelVersions"])
    assert linked_versions == [{"name": registry.name, "version": registration.version}]
    assert [str(v.version) for v in client.search_model_versions(f"run_id = '{info.run_id}'")] == [registration.version]

    # The champion answers a plain list of questions as it answers a DataFrame.
    assert registry.aliases()[CHAMPION] == registration.version
    with use_tracking_uri(uri), keep_sys_path():
        model = mlflow.pyfunc.load_model(registry.model_uri())
        listed = model.predict(QUESTIONS)
        framed = model.predict(pd.DataFrame({"question": QUESTIONS}))
    assert len(listed) == 2 and list(listed["answer"]) == list(framed["answer"])
    assert set(listed["model"]) <= {"slm", "llm"}
