"""Stages by name, in pipeline order: adding one is one module and one line here (RouteLLM's ROUTER_CLS shape).

STAGES drives the command line (escalate.cli), the retrain flow (flows/retrain.py), MLflow logging
(tasks/tracking.py), the timing bench and which candidates and validation reports a finished run has;
tests/test_stages.py checks dvc.yaml against it.
"""

from __future__ import annotations

import json
from pathlib import Path

from escalate.citer.stage import CiterStage
from escalate.config import Profile
from escalate.corea.stage import CoreaStage
from escalate.sater.stage import SaterStage
from escalate.stages.base import Candidate, Stage
from escalate.stages.evaluate import EvaluateStage
from escalate.stages.questions import QuestionsStage
from escalate.stages.samples import SamplesStage
from escalate.stages.zoo import ZooStage

# Training stages come last; citer compares itself with SATER's cascade, so it runs after sater.
STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    QuestionsStage(),
    ZooStage(),
    SamplesStage(),
    EvaluateStage(),
    SaterStage(),
    CoreaStage(),
    CiterStage(),
)}


def enabled_stages(profile: Profile) -> list[Stage]:
    """The stages the pipeline runs for `profile`, in order: the core ones and each configured training stage."""
    return [stage for stage in STAGES.values() if stage.enabled(profile)]


def stage_log(stage: str, profile: Profile, root: Path | str = ".") -> dict:
    """What a finished stage contributes to its MLflow run: metrics, curves and artifact paths."""
    if stage not in STAGES:
        raise KeyError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")
    return STAGES[stage].log(profile, root)


def candidates(profile: Profile, root: Path | str = ".") -> list[Candidate]:
    """Every candidate cascade of a finished pipeline: (summary row, the profile it runs with, the directory it
    is registered from). The evaluate stage's strategies on the zoo SLM, then each configured training stage's:
    SATER's three strategies and COREA's cascade on their trained SLMs, and CITER's token-level cascade."""
    found = [c for stage in enabled_stages(profile) for c in stage.candidates(profile, root)]
    # A training stage's router evaluated by the evaluate stage too (evaluation.strategies empty: every router)
    # ran there on the untrained SLM; the training stage's row, on the SLM it trained, is the candidate.
    return list({row["strategy"]: (row, source, where) for row, source, where in found}.values())


def validation_reports(profile: Profile, root: Path | str = ".") -> dict[str, dict]:
    """Every great-expectations report of the tables a run read: questions, samples and each configured training
    stage's tables (SATER's preferences and refusal targets, COREA's warm-up, CITER's token labels...), by name."""
    return {name: json.loads(path.read_text()) for stage in enabled_stages(profile)
            for name, path in stage.reports(profile, root).items()}
