"""Registration tasks: gate and register candidates, and ask the champion a question.

No retries on registration: a retry after a version was created would register it twice.
"""

from __future__ import annotations

import pandas as pd
from prefect import get_run_logger, task

from escalate.registry.aliases import Registry
from escalate.registry.publish import Candidate, champion_pick, register_candidate


@task(name="register-candidate", task_run_name="register-{strategy}")
def register(strategy: str, **kwargs: object) -> Candidate:
    candidate = register_candidate(strategy, **kwargs)
    get_run_logger().info("%s: %s", strategy, candidate.registration.summary())
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
    return model.predict(pd.DataFrame({"question": questions}))
