"""Query-level cascades: a router scores each whole question, and below the threshold the LLM answers it.

A candidate is one of escalate.routers' strategies, from the evaluate stage's directory (its summary
row in metrics.json, its score records, its fitted router's state in routers/<name>/). Its bundle holds
that state as `router_state/` (escalate.routers.state: data, never code), every file listed with its
SHA-256 in cascade.json like the checkpoints'; it builds an escalate.cascade.Cascade over generation
backends, and is served by pointing each self-hosted model at its own vLLM server.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd

from escalate.cascade import ROLES, Answerer, Cascade
from escalate.kinds.base import BundleSpec, CascadeKind, Found
from escalate.models.backends import make_backend
from escalate.registry.files import SPEC_FILE, BundleError, check_files, manifest
from escalate.registry.gates import per_query_outcomes
from escalate.routers.base import Router
from escalate.routers.registry import ROUTERS, make_router
from escalate.routers.state import RouterStateError, load_router, save_router

if TYPE_CHECKING:
    from escalate.config import Profile
    from escalate.evaluation.cost import CostModel

ROUTER_DIR = "router_state"
LEGACY_ROUTER_FILE = "router.pkl"  # what bundles held before router state was data: refused, never read


def router_kwargs(strategy: str, seed: int) -> dict[str, Any]:
    return {"seed": seed} if strategy == "random" else {}


def fitted_router(eval_dir: Path, strategy: str, kwargs: dict[str, Any]) -> Router:
    """The router as the evaluation fitted it on calib (routers/<name>/), so the bundle scores alike."""
    path = eval_dir / "routers" / strategy
    if path.is_dir():
        try:
            return load_router(path)
        except RouterStateError as exc:
            raise BundleError(str(exc)) from None
    if path.with_suffix(".pkl").exists():
        raise BundleError(f"{path.with_suffix('.pkl')}: an evaluation from before router state was data; "
                          "rerun `escalate evaluate`")
    return make_router(strategy, **kwargs)


class QueryLevel(CascadeKind):
    name: ClassVar[str] = "query"
    label: ClassVar[str] = "query-level"
    router_artifact: ClassVar[str] = ROUTER_DIR
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

    def bundle_router(self, spec: BundleSpec, router: Any) -> Router:
        return router or make_router(spec.strategy, **spec.router_kwargs)

    def stage_router(self, router: Router, stage: Path) -> tuple[Path, dict[str, Any]]:
        """The router's state, listed file by file like a checkpoint."""
        path = save_router(router, stage / ROUTER_DIR)
        return path, {"router_files": manifest(path)}

    def load_router(self, path: Path, raw: Mapping[str, Any], checkpoints: Mapping[str, str]) -> Router:
        """The router's state, checked file by file against cascade.json, then read as data."""
        if path.name == LEGACY_ROUTER_FILE or path.is_file():
            raise BundleError(f"{path.name}: pickled routers are not loaded (they can run code); "
                              "re-register the candidate")
        if "router_files" not in raw:
            raise BundleError(f"{SPEC_FILE} of a query-level bundle lists no router_files; rebuild the bundle")
        check_files(path, raw["router_files"], "router")
        try:
            router = load_router(path)
        except RouterStateError as exc:
            raise BundleError(f"the bundled router at {path} does not load: {exc}") from None
        if "slm" in checkpoints:
            router.bind_slm(str(checkpoints["slm"]))  # not the path it was fitted with, which may not exist here
        return router

    def build(self, spec: BundleSpec, checkpoints: Mapping[str, str], router: Router | None,
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
            raise BundleError(f"{ROUTER_DIR} holds router {router.name!r} but {SPEC_FILE} says {spec.strategy!r}")
        return Cascade(backends["slm"], backends["llm"], router, spec.threshold, spec.cost, spec.sampling, spec.seed)
