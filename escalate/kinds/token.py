"""Token-level cascades (CITER): a token router picks, token by token, which model writes the next one.

The candidate comes from the citer stage's directory (escalate.citer.stage.candidate_figures: the
calib-chosen round and τ, its records priced under the registry's cost model). Its bundle holds the
token router's saved directory as `router/`, its files listed with their SHA-256 in cascade.json like
the checkpoints'; its threshold is τ and both models are self-hosted. It builds an
escalate.citer.cascade.TokenLevelCascade, which the gateway decodes in its own process: no vLLM
server steps two models token by token with one router between them, so it needs no model servers.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd

from escalate.cascade import ROLES, Answerer
from escalate.citer import STRATEGY as CITER
from escalate.citer.stage import candidate_figures
from escalate.kinds.base import BundleSpec, CascadeKind, Found
from escalate.models.backends import is_self_hosted
from escalate.registry.files import SPEC_FILE, BundleError, check_files, manifest
from escalate.registry.gates import outcome_table

if TYPE_CHECKING:
    from escalate.config import Profile
    from escalate.evaluation.cost import CostModel

ROUTER_DIR = "router"


class TokenLevel(CascadeKind):
    name: ClassVar[str] = "token"
    label: ClassVar[str] = "token-level"
    router_artifact: ClassVar[str] = ROUTER_DIR
    needs_servers: ClassVar[bool] = False

    def offers(self, strategy: str) -> bool:
        return strategy == CITER

    def find(self, strategy: str, profile: Profile, cost: CostModel, stage_dir: Path, test: pd.DataFrame) -> Found:
        """From the citer stage's directory. Its score is the router's per-token P(LLM needed), not
        P(SLM correct) of an answer: ECE does not apply."""
        found = candidate_figures(profile, cost, stage_dir)
        return Found(found.tau, found.router_dir, found.row, found.llm_accuracy, outcome_table(found.outcomes, test),
                     False, {})

    def check(self, spec: BundleSpec) -> None:
        if spec.strategy != CITER:
            raise BundleError(f"a token-level bundle's strategy is {CITER!r}, got {spec.strategy!r}")
        if not 0 <= spec.threshold <= 1:
            raise BundleError(f"a token-level bundle's threshold is τ in [0, 1], got {spec.threshold}")
        remote = [r for r in ROLES if not is_self_hosted(getattr(spec, r).backend)]
        if remote:
            backends = ", ".join(f"{r} has backend {getattr(spec, r).backend!r}" for r in remote)
            raise BundleError(f"token-level routing steps both models in process; the {backends}: "
                              "bundle its checkpoint instead")

    def bundle_router(self, spec: BundleSpec, router: Any) -> Path:
        if not (isinstance(router, (str, Path)) and (Path(router) / "config.json").is_file()):
            raise BundleError(f"a token-level bundle needs the token router's saved directory (TokenRouter.save), "
                              f"got {router!r}")
        return Path(router)

    def stage_router(self, router: Path, stage: Path) -> tuple[Path, dict[str, Any]]:
        """A few kilobytes: copied, and listed file by file like a checkpoint."""
        shutil.copytree(router, stage / ROUTER_DIR)
        return stage / ROUTER_DIR, {"router_files": manifest(stage / ROUTER_DIR)}

    def load_router(self, path: Path, raw: Mapping[str, Any], checkpoints: Mapping[str, str]) -> Any:
        """The token router, checked file by file and loaded."""
        if "router_files" not in raw:
            raise BundleError(f"{SPEC_FILE} of a token-level bundle lists no router_files; rebuild the bundle")
        check_files(path, raw["router_files"], "router")
        from escalate.citer.router import TokenRouter  # torch loads only when a token-level bundle is read

        try:
            return TokenRouter.load(path)
        except Exception as exc:  # safetensors and torch raise their own types for a corrupt file
            raise BundleError(f"the bundled token router at {path} does not load: {type(exc).__name__}: {exc}") from None

    def build(self, spec: BundleSpec, checkpoints: Mapping[str, str], router: Any,
              overrides: Mapping[str, Mapping[str, Any]]) -> Answerer:
        """A TokenLevelCascade decoding both models in this process; `router` is the loaded TokenRouter."""
        from escalate.citer.cascade import TokenLevelCascade  # torch loads only when a token-level cascade is built

        if router is None:
            raise BundleError(f"a token-level cascade needs its token router (the bundle's {ROUTER_DIR}/, via read_bundle)")
        missing = [role for role in ROLES if role not in checkpoints]
        if missing:
            raise BundleError(f"a token-level cascade decodes both models in process; no checkpoint for {missing}")
        configs = {role: replace(getattr(spec, role), **dict(overrides.get(role, {}))) for role in ROLES}
        try:
            return TokenLevelCascade.from_checkpoints(configs["slm"], configs["llm"], checkpoints, router,
                                                      spec.threshold, spec.cost, spec.sampling)
        except (OSError, ValueError) as exc:
            raise BundleError(f"cannot build the token-level cascade: {type(exc).__name__}: {exc}") from None
