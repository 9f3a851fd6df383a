"""Registration tasks: bundle, load-gate, gate and register candidates, and ask the champion a question.

No retries on registration: a retry after a version was created would register it twice.
"""

from __future__ import annotations

import pandas as pd
from prefect import get_run_logger, task

from escalate.registry.aliases import Registry
from escalate.registry.gates import GateResult
from escalate.registry.publish import (
    Bundled,
    Candidate,
    bundle_candidate,
    champion_pick,
    load_bundled,
    register_bundled,
)


@task(name="bundle-candidate", task_run_name="bundle-{strategy}")
def bundle(strategy: str, **kwargs: object) -> Bundled:
    """Log one candidate's cascade as a bundle in its own run."""
    return bundle_candidate(strategy, **kwargs)


@task(name="load-gates")
def load_gates(bundled: list[Bundled], tracking_uri: str, timeout_s: float) -> list[GateResult]:
    """Every bundle loads and answers in one fresh process; each verdict is logged."""
    results = load_bundled(bundled, tracking_uri, timeout_s)
    for b, result in zip(bundled, results):
        get_run_logger().info("%s: bundle_load %s", b.strategy, "pass" if result.passed else f"FAIL: {result.reason}")
    return results


@task(name="register-candidate", task_run_name="register-{bundled.strategy}")
def register(bundled: Bundled, loaded: GateResult, **kwargs: object) -> Candidate:
    """Gate one bundled candidate and register it (its load result given)."""
    candidate = register_bundled(bundled, loaded, **kwargs)
    get_run_logger().info("%s: %s", bundled.strategy, candidate.registration.summary())
    return candidate


@task(name="move-champion")
def move_champion(registry: Registry, ranked: list[Candidate]) -> Candidate | None:
    """@champion to the best-ranked candidate that passed every gate (ranked: the objective's order)."""
    best = champion_pick(ranked)
    if best is None:
        get_run_logger().info("no candidate passed every gate; @champion stays where it was")
        return None
    registry.promote(best.registration.version, by="retrain",
                     reason=f"{best.strategy}: the best-ranked candidate on calib that passed every gate")
    return best


@task(name="ask-champion", retries=1, retry_delay_seconds=2)
def ask_champion(registry: Registry, questions: list[str]) -> pd.DataFrame | None:
    """The champion, loaded from the registry the way a service would, answers a few questions."""
    import mlflow

    from escalate.registry.bundle import use_tracking_uri

    if registry.champion() is None:
        return None
    with use_tracking_uri(registry.uri):
        model = mlflow.pyfunc.load_model(registry.model_uri())
    return model.predict(questions)  # a plain list, as a client would send it
