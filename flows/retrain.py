"""The `retrain` flow: questions -> zoo -> samples -> evaluate [-> sater -> corea -> citer] -> gate and register,
in one MLflow run.

A profile with a `sater:` section also trains SATER's SLM (its refusal cascade, pre-generation router and
weighted vote are three more candidates), one with a `corea:` section COREA's (one more), and one with a
`citer:` section CITER's token router (its token-level cascade is one more).

Each stage is a DVC stage run by a task, so a second run with unchanged inputs skips finished
stages and a killed run resumes from the last finished one. Run it with:

    python -m flows.retrain --profile tiny
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from escalate.telemetry import disable_telemetry

disable_telemetry()

import pandas as pd  # noqa: E402
from prefect import flow  # noqa: E402

from escalate.config import Profile, load_profile  # noqa: E402
from escalate.evaluation.report import format_table  # noqa: E402
from escalate.locks import FileLock  # noqa: E402
from escalate.registry.aliases import CHAMPION, Registry  # noqa: E402
from escalate.registry.publish import link_run, rank_candidates  # noqa: E402
from escalate.stages import cost_model, paths  # noqa: E402
from escalate.stages.registry import enabled_stages, validation_reports  # noqa: E402
from escalate.stages.results import candidate_sources, data_unchanged, results_table  # noqa: E402
from escalate.tracking import Tracker, dvc_hashes, git_commit, ui_route  # noqa: E402
from tasks.registry import ask_champion, bundle, load_gates, move_champion, register  # noqa: E402
from tasks.stages import run_stage  # noqa: E402
from tasks.tracking import log_stage  # noqa: E402

RETRAIN_LOCK = ".retrain.lock"  # under artifacts/<profile>/: one retrain of a profile at a time
RETRAIN_REASON = "escalate.retrain_reason"  # the run's tag saying why it ran


@flow(name="retrain", log_prints=True)
def retrain(
    profile: str = "tiny", root: str = ".", tracking_uri: str | None = None, skip_if_unchanged: bool = False,
    reason: str = "manual",
) -> dict:
    """Run every stage of `profile`, log it to MLflow, and gate and register every candidate cascade.

    skip_if_unchanged (scheduled runs): when the questions' DVC hash equals the one the current
    champion was trained on, record "no change" and stop.
    reason: why this run happened, the run's `escalate.retrain_reason` tag ("scheduled" from the nightly
    deployment, the drift verdict's line when the drift trigger ran it).
    """
    if not reason.strip():  # e.g. a trigger whose template found no reason in its event
        raise ValueError('reason must say why this retrain runs (default "manual"); got an empty one')
    root_path = Path(root).resolve()
    cfg = load_profile(profile, root_path)  # a bad profile fails here, before any work
    tracker = Tracker(tracking_uri or cfg.tracking.uri, cfg.tracking.experiment, root_path)
    registry = Registry(tracker.uri, cfg.tracking.registered_model)  # its own model: gates compare within a profile
    registry.check()  # an unreachable registry fails now, before hours of work
    with FileLock(cfg.artifacts(root_path) / RETRAIN_LOCK, f"retrain of profile {profile}"):  # else Busy, at once
        return run_locked(profile, cfg, root_path, tracker, registry, skip_if_unchanged, reason)


def run_locked(profile: str, cfg: Profile, root_path: Path, tracker: Tracker, registry: Registry,
               skip_if_unchanged: bool, reason: str = "manual") -> dict:
    """The run itself, under the profile's lock: runs of the profile left RUNNING by a killed process are
    marked failed first (the lock proves nobody is writing them)."""
    run_id = tracker.start(f"retrain-{profile}", tags={"escalate.profile": profile, RETRAIN_REASON: reason,
                                                       **git_commit(root_path)})
    for stale in tracker.fail_abandoned(profile, run_id):
        print(f"run {stale} was left RUNNING by a process that died; marked FAILED")
    tracker.params(run_id, {"profile": profile, **asdict(cfg)})
    ok = False
    try:
        for stage in enabled_stages(cfg):
            run_stage(stage.name, profile, str(root_path))
            log_stage(tracker, run_id, stage.name, cfg, str(root_path))
            champion = registry.champion() if stage.name == "questions" and skip_if_unchanged else None
            if champion is not None and data_unchanged(registry.lineage(champion), root_path, profile):
                tracker.tags(run_id, {"escalate.outcome": "no-change"})
                tracker.params(run_id, dvc_hashes(root_path, profile))
                print("no change: the data has the same DVC hash as the champion's; nothing retrained")
                ok = True
                return {"run_id": run_id, "outcome": "no-change"}
        tracker.params(run_id, dvc_hashes(root_path, profile))  # params, not tags: the Tags box stays readable
        candidates = register_all(cfg, tracker, registry, run_id, root_path)
        link_run(tracker, run_id, registry, candidates)
        ok = True
    finally:
        tracker.end(run_id, ok)
    return finish(cfg, root_path, run_id, registry, candidates)


def register_all(cfg: Profile, tracker: Tracker, registry: Registry, run_id: str, root: Path) -> list:
    """Every evaluated strategy becomes a registered candidate (the objective's pick last, so @challenger
    ends on it); then @champion moves to the best-ranked one that passed every gate.

    Each candidate is bundled in its own run; all bundles then load in one fresh process (the load
    gate); then each is gated and registered, in order."""
    p = paths(cfg, root)
    rows, sources = candidate_sources(cfg, root)
    ranked = rank_candidates(rows, cfg.evaluation.delta)
    order = list(reversed(ranked))
    shared = dict(cost=cost_model(cfg, root), zoo_dir=p["zoo"], questions=pd.read_parquet(p["questions"]),
                  tracker=tracker, parent_run_id=run_id)
    bundled = [bundle(s, profile=sources[s][0], eval_dir=sources[s][1], **shared) for s in order]
    loaded = load_gates(bundled, tracker.uri, cfg.gates.load_timeout_s)
    validation = validation_reports(cfg, root)
    registered = {b.strategy: register(b, result, profile=sources[b.strategy][0], validation=validation,
                                       registry=registry, parent_run_id=run_id, root=root, may_take_champion=False)
                  for b, result in zip(bundled, loaded)}
    best = move_champion(registry, [registered[s] for s in ranked])
    if best is not None:
        print(f"@champion -> version {best.registration.version} ({best.strategy}): the best-ranked candidate "
              "on calib that passed every gate")
    return list(registered.values())


def finish(cfg: Profile, root: Path, run_id: str, registry: Registry, candidates: list) -> dict:
    """Print the results table (every candidate, the trained SLMs' too, then the references), the registry's
    verdicts and the champion answering."""
    p = paths(cfg, root)
    metrics = json.loads((p["eval"] / "metrics.json").read_text())
    table = results_table(candidate_sources(cfg, root)[0])
    verdicts = "\n".join(f"  {c.strategy:<18} {c.registration.summary()}" for c in reversed(candidates))
    champion = registry.aliases().get(CHAMPION)
    verdicts += f"\n  @champion: {'version ' + champion if champion else 'unset (no candidate passed every gate)'}"
    questions = pd.read_parquet(p["questions"])
    asked = list(questions.loc[questions["split"] == cfg.evaluation.split, "question"].head(3))
    answers = ask_champion(registry, asked)
    print(
        f"\nresults: profile {cfg.name}, split {cfg.evaluation.split}, seed {cfg.seed}, "
        f"cost model {metrics['context']['cost_model']}\n{table}\n\nregistry ({registry.name}):\n{verdicts}"
    )
    if answers is not None:
        shown = answers[["answer", "model", "score", "cost"]].assign(question=[q[:60] for q in asked])
        print(f"\n{registry.name}@champion answering:\n{format_table(shown.to_dict('records'))}")
    print(
        f"\nreport:    {p['eval'] / 'report.md'}\n"
        f"MLflow UI: make ui, then http://127.0.0.1:5000/{ui_route(registry.client.get_run(run_id).info.experiment_id, run_id)}"
    )
    return {
        "run_id": run_id,
        "outcome": "retrained",
        "metrics": metrics,
        "registrations": {c.strategy: c.registration for c in candidates},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.retrain",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profile", default="tiny", help="profile in configs/ (default: tiny)")
    parser.add_argument("--root", default=".", help="project root (default: .)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: the profile's)")
    args = parser.parse_args(argv)
    retrain(profile=args.profile, root=args.root, tracking_uri=args.tracking_uri)
    return 0


if __name__ == "__main__":
    sys.exit(main())
