"""Query-level cascades: a router scores each whole question, and below the threshold the LLM answers it.

A candidate is one of escalate.routers' strategies, from the evaluate stage's directory (its summary
row in metrics.json, its score records, its fitted router in routers/<name>.pkl). Its bundle holds
the fitted router pickled as `router.pkl`; it builds an escalate.cascade.Cascade over generation
backends, and is served by pointing each self-hosted model at its own vLLM server.
"""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd

from escalate.cascade import ROLES, Answerer, Cascade
from escalate.kinds.base import CascadeKind, Found
from escalate.models.backends import make_backend
from escalate.registry.files import SPEC_FILE, BundleError
from escalate.registry.gates import per_query_outcomes
from escalate.routers.base import Router
from escalate.routers.registry import ROUTERS, make_router

if TYPE_CHECKING:
    from escalate.config import Profile
    from escalate.evaluation.cost import CostModel
    from escalate.registry.bundle import CascadeSpec

ROUTER_FILE = "router.pkl"


def router_kwargs(strategy: str, seed: int) -> dict[str, Any]:
    return {"seed": seed} if strategy == "random" else {}


def fitted_router(eval_dir: Path, strategy: str, kwargs: dict[str, Any]) -> Router:
    """The router as the evaluation fitted it on calib (routers/<name>.pkl), so the bundle scores alike."""
    path = eval_dir / "routers" / f"{strategy}.pkl"
    if not path.is_file():
        return make_router(strategy, **kwargs)
    with path.open("rb") as fh:
        return pickle.load(fh)


class QueryLevel(CascadeKind):
    name: ClassVar[str] = "query"
    label: ClassVar[str] = "query-level"
    router_artifact: ClassVar[str] = ROUTER_FILE
    needs_servers: ClassVar[bool] = True

    def offers(self, strategy: str) -> bool:
        return strategy in ROUTERS

    def find(self, strategy: str, profile: Profile, cost: CostModel, stage_dir: Path, test: pd.DataFrame) -> Found:
        """From the evaluate stage's directory (metrics.json, records.parquet, routers/); `cost` priced its records."""
        result = json.loads((stage_dir / "metrics.json").read_text())
        row = next(r for r in result["summary"] if r["strategy"] == strategy)
        threshold = math.inf if row.get("threshold") is None else float(row["threshold"])
        records = pd.read_parquet(stage_dir / "records.parquet")
        records = records[records["strategy"] == strategy].drop(columns="strategy")
        kwargs = router_kwargs(strategy, profile.evaluation.seed)
        return Found(threshold, fitted_router(stage_dir, strategy, kwargs), row, float(result["a_llm"]),
                     per_query_outcomes(records, row["mode"], threshold, test), ROUTERS[strategy].is_probability, kwargs)

    def bundle_router(self, spec: CascadeSpec, router: Any) -> Router:
        return router or make_router(spec.strategy, **spec.router_kwargs)

    def stage_router(self, router: Router, stage: Path) -> tuple[Path, dict[str, Any]]:
        with (stage / ROUTER_FILE).open("wb") as fh:
            pickle.dump(router, fh)
        return stage / ROUTER_FILE, {}

    def load_router(self, path: Path, raw: Mapping[str, Any], checkpoints: Mapping[str, str]) -> Router:
        try:
            with path.open("rb") as fh:
                router = pickle.load(fh)
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ModuleNotFoundError) as exc:
            raise BundleError(f"bundle artifact {path} unreadable: {type(exc).__name__}: {exc}") from None
        if "slm" in checkpoints:
            router.bind_slm(str(checkpoints["slm"]))  # not the path it was fitted with, which may not exist here
        return router

    def build(self, spec: CascadeSpec, checkpoints: Mapping[str, str], router: Router | None,
              overrides: Mapping[str, Mapping[str, Any]]) -> Answerer:
        """A Cascade over generation backends; `router` defaults to make_router(spec.strategy)."""
        backends = {}
        try:
            for role in ROLES:
                cfg = getattr(spec, role)
                if role in checkpoints:
                    cfg = replace(cfg, source=str(checkpoints[role]))
                cfg = replace(cfg, **dict(overrides.get(role, {})))
                if cfg.source == "zoo":
                    raise BundleError(f"the {role} has source 'zoo' but the bundle holds no {role} checkpoint")
                backends[role] = make_backend(cfg, role, Path("."), spec.sampling.batch_size)
        except Exception:
            for backend in backends.values():
                backend.close()
            raise
        router = router or make_router(spec.strategy, **spec.router_kwargs)
        if router.name != spec.strategy:
            raise BundleError(f"{ROUTER_FILE} holds router {router.name!r} but {SPEC_FILE} says {spec.strategy!r}")
        return Cascade(backends["slm"], backends["llm"], router, spec.threshold, spec.cost, spec.sampling, spec.seed)
