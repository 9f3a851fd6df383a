"""From an evaluation to registered candidates: rank them by the profile's objective, gate, register.

Every evaluated strategy is a candidate. The objective ranks them on the calib split (the lowest
cost at accuracy >= LLM-only - delta there); the test split checks them through the gates.
Candidates are registered in reverse rank order, so the objective's pick is registered last and
@challenger ends on it; then @champion moves to the best-ranked candidate that passed every gate
(champion_pick), or stays where it is when none did.

A candidate is found by its cascade kind (escalate.kinds), and everything after is one path
(register_candidate): a query-level strategy from the evaluate stage's directory (its summary row,
score records and fitted router), or CITER's token-level cascade from the citer stage's directory
(escalate.citer.stage.citer_candidate gives its summary row; its records are priced under the same
cost model; its router is the round's saved directory).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.entities import LoggedModelOutput

from escalate.config import Profile
from escalate.evaluation.cost import CostModel
from escalate.evaluation.thresholds import meets_accuracy
from escalate.kinds import KINDS, kind_for
from escalate.registry.aliases import CHAMPION, TAG_CONTENT, Registration, Registry, lineage_tags
from escalate.registry.bundle import CascadeSpec, local_checkpoint, log_bundle
from escalate.registry.gates import GateResult, candidate_gates, load_gates
from escalate.routers.base import Router
from escalate.tracking import Tracker


def rank_candidates(rows: Sequence[Mapping[str, Any]], delta: float) -> list[str]:
    """Routable strategies, best first: those meeting accuracy >= LLM-only - delta on calib by calib
    cost, then the rest (no qualifying calib threshold) by name. Pure: rows are metrics.json's summary
    (plus citer_candidate's row: CITER is routable though it is no query-level router)."""
    strategies = [r for r in rows if any(kind.offers(r.get("strategy")) for kind in KINDS.values())]

    def key(row: Mapping[str, Any]) -> tuple[int, float, str]:
        cost = row.get("calib_cost")
        ok = (
            cost is not None
            and math.isfinite(float(cost))
            and bool(meets_accuracy(float(row["calib_accuracy"]), float(row["calib_llm_accuracy"]), delta))
        )
        return (0, float(cost), row["strategy"]) if ok else (1, math.inf, row["strategy"])

    return [r["strategy"] for r in sorted(strategies, key=key)]


def same_data(champion_lineage: Mapping[str, str] | None, hashes: Mapping[str, str], profile: str) -> bool:
    """Whether the questions' DVC hash equals the one the champion was trained on (a scheduled run's
    "no change"). Pure: the champion version's lineage (Registry.lineage; None without one) and the run's
    current hashes."""
    key = f"dvc.artifacts/{profile}/questions.parquet"
    return champion_lineage is not None and key in hashes and champion_lineage.get(key) == hashes[key]


def headline(row: Mapping[str, Any]) -> dict[str, float]:
    """The figures a reviewer compares versions on, under the names the registry shows: accuracy, normalized
    cost C, saving 1 − C, AUROC and ECE (those the summary row has as finite numbers)."""
    named = {"accuracy": row.get("accuracy"), "normalized_cost": row.get("cost"), "auroc": row.get("auroc"),
             "ece": row.get("ece")}
    out = {k: float(v) for k, v in named.items()
           if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}
    if "normalized_cost" in out:
        out["saving"] = 1.0 - out["normalized_cost"]
    return out


@dataclass(frozen=True)
class Candidate:
    strategy: str
    registration: Registration
    model_uri: str
    gates: list


def champion_pick(ranked: Sequence[Candidate]) -> Candidate | None:
    """The first candidate, in the objective's calib order, whose every gate passed; None when none did."""
    return next((c for c in ranked if c.registration.passed), None)


def link_run(tracker: Tracker, run_id: str, registry: Registry, registered: Sequence[Candidate]) -> dict[str, str]:
    """Link the flow's run to what it registered: tags naming every `model/version` and the champion, a Markdown
    run description linking each version's page, and each candidate's logged model as an output of the run
    (its page's "Logged models", and through their `mlflow.modelVersions` tags, Registry._link_model, its
    "Registered models"; each version's run_id stays its candidate run's). Returns the tags set."""
    champion = registry.aliases().get(CHAMPION)
    tags = {"escalate.registered": ", ".join(f"{registry.name}/{c.registration.version}" for c in registered),
            "escalate.champion": f"{registry.name}/{champion}" if champion else "none"}
    ours = any(c.registration.version == champion for c in registered)
    rows = [f"| {c.strategy} | [{registry.name} v{c.registration.version}](#/models/{registry.name}/versions/"
            f"{c.registration.version}) | {_verdict(c.registration)} |" for c in registered]
    note = [f"**@champion:** {tags['escalate.champion']}" + (" (registered by this run)" if ours else ""), "",
            "| candidate | version | gates |", "|---|---|---|", *rows]
    tracker.tags(run_id, {**tags, "mlflow.note.content": "\n".join(note)})
    models = [c.model_uri.removeprefix("models:/") for c in registered if c.model_uri.startswith("models:/m-")]
    if models:
        tracker.client.log_outputs(run_id, [LoggedModelOutput(m, 0) for m in models])
    return tags


def _verdict(registration: Registration) -> str:
    return "pass" if registration.passed else f"rejected by {', '.join(registration.failed)}"


@dataclass(frozen=True)
class CandidateSource:
    """What differs between candidates; the rest of registration is one path."""

    spec: CascadeSpec
    router: Router | Path  # a fitted query-level router, or a token router's saved directory
    row: Mapping[str, Any]  # its summary row: accuracy, normalized cost, ECE... at its calib-chosen threshold
    llm_accuracy: float  # LLM-only accuracy on the same test split
    outcomes: pd.DataFrame  # per test query at the threshold (gates.outcome_table), for the regression gate
    is_probability: bool  # whether its score is meant as P(SLM correct): the ECE gate applies
    eval_dir: Path  # whose report, metrics and plots go in the bundle


def candidate_source(strategy: str, profile: Profile, cost: CostModel, stage_dir: Path,
                     test: pd.DataFrame) -> CandidateSource:
    """`strategy`'s candidate as its kind finds it in `stage_dir` (the directory of the stage that evaluated it)."""
    kind = kind_for(strategy)
    found = kind.find(strategy, profile, cost, stage_dir, test)
    spec = CascadeSpec(strategy=strategy, threshold=found.threshold, slm=profile.models["slm"], llm=profile.models["llm"],
                       cost=cost, sampling=profile.sampling, seed=profile.seed, profile=profile.name,
                       router_kwargs=found.router_kwargs, kind=kind.name)
    return CandidateSource(spec, found.router, found.row, found.llm_accuracy, found.outcomes, found.is_probability,
                           stage_dir)


@dataclass(frozen=True)
class Bundled:
    """A candidate logged as a bundle in its own run, waiting for its load gate and its registration."""

    strategy: str
    source: CandidateSource
    info: Any  # escalate.registry.bundle.BundleInfo
    run_id: str
    smoke: list[str]  # the questions its load gate asks


def bundle_candidate(
    strategy: str,
    *,
    profile: Profile,
    cost: CostModel,
    eval_dir: Path,
    zoo_dir: Path,
    questions: pd.DataFrame,
    tracker: Tracker,
    parent_run_id: str,
) -> Bundled:
    """Log `strategy`'s cascade as a bundle in its own run (a child of the flow's run).

    eval_dir: the directory of the stage that evaluated it: the evaluate stage's, or for "citer" the citer stage's.
    """
    test = questions[questions["split"] == profile.evaluation.split]
    source = candidate_source(strategy, profile, cost, eval_dir, test)
    checkpoints = {
        role: path
        for role in ("slm", "llm")
        if (path := local_checkpoint(profile.models[role], role, zoo_dir)) is not None
    }
    run_id = tracker.start(f"candidate-{strategy}", tags={"escalate.strategy": strategy}, parent_id=parent_run_id)
    numeric = {k: float(v) for k, v in source.row.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}
    numeric.update(headline(source.row))
    smoke = list(test["question"].head(2))
    info = log_bundle(
        source.spec,
        tracking_uri=tracker.uri,
        run_id=run_id,
        checkpoints=checkpoints,
        router=source.router,
        eval_dir=source.eval_dir,
        outcomes=source.outcomes,
        metrics=numeric,
        example_questions=smoke,
    )
    return Bundled(strategy, source, info, run_id, smoke)


def load_bundled(bundled: Sequence[Bundled], tracking_uri: str, timeout_s: float) -> list[GateResult]:
    """Every bundle's load gate, all in one fresh process (gates.load_gates), in `bundled` order."""
    return load_gates([b.info.model_uri for b in bundled], [b.smoke for b in bundled], tracking_uri, timeout_s)


def registration_key(content: str, profile: Profile) -> str:
    """What makes two registrations the same: the bundle's content digest under the same gate limits and δ.
    A rerun with nothing changed registers nothing new; tightened gates re-gate the same bundle (new verdicts)."""
    limits = json.dumps({"gates": asdict(profile.gates), "delta": profile.evaluation.delta}, sort_keys=True)
    return hashlib.sha256(f"{content}\n{limits}".encode()).hexdigest()


def register_bundled(
    bundled: Bundled,
    loaded: GateResult,
    *,
    profile: Profile,
    validation: Mapping[str, Any],
    registry: Registry,
    parent_run_id: str,
    root: Path,
    may_take_champion: bool,
) -> Candidate:
    """Gate a bundled candidate (its load result given) and register it with its verdicts and lineage."""
    source, info = bundled.source, bundled.info
    gates = candidate_gates(
        validation=validation,
        summary=source.row,
        llm_accuracy=source.llm_accuracy,
        is_probability=source.is_probability,
        pairs=registry.champion_pairs(source.outcomes),
        load=loaded,
        delta=profile.evaluation.delta,
        limits=profile.gates,
    )
    registration = registry.register(
        info.model_uri,
        gates,
        run_id=bundled.run_id,
        model_id=info.model_id,
        tags={**info.tags(), TAG_CONTENT: registration_key(info.content, profile)},
        lineage=lineage_tags(root, profile.name, run_id=bundled.run_id, parent_run_id=parent_run_id),
        figures=headline(source.row),
        report="artifacts/eval/report.md" if source.eval_dir is not None else None,
        may_take_champion=may_take_champion,
    )
    return Candidate(bundled.strategy, registration, info.model_uri, gates)


def register_candidate(
    strategy: str,
    *,
    profile: Profile,
    cost: CostModel,
    eval_dir: Path,
    zoo_dir: Path,
    questions: pd.DataFrame,
    validation: Mapping[str, Any],
    tracker: Tracker,
    parent_run_id: str,
    registry: Registry,
    root: Path,
    may_take_champion: bool,
) -> Candidate:
    """One candidate from start to end: bundle it, load it in a fresh process, gate and register it.

    The retrain flow does the same for many at once, with one fresh process for all their loads.
    """
    bundled = bundle_candidate(strategy, profile=profile, cost=cost, eval_dir=eval_dir, zoo_dir=zoo_dir,
                               questions=questions, tracker=tracker, parent_run_id=parent_run_id)
    loaded = load_bundled([bundled], tracker.uri, profile.gates.load_timeout_s)[0]
    return register_bundled(bundled, loaded, profile=profile, validation=validation, registry=registry,
                            parent_run_id=parent_run_id, root=root, may_take_champion=may_take_champion)
