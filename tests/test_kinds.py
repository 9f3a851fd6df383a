"""Cascade kinds and self-hosted backends as registries: lookups by name, and a new kind plugs in with one line."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import pytest

from escalate.citer import STRATEGY as CITER
from escalate.config import ModelConfig, SamplingConfig
from escalate.evaluation.cost import TokenPriceCost
from escalate.kinds import KINDS, QUERY_LEVEL, TOKEN_LEVEL, CascadeKind, Found, QueryLevel, TokenLevel, kind_for
from escalate.models.backends import BACKENDS, is_self_hosted
from escalate.registry.bundle import BundleError, CascadeSpec, build_cascade
from escalate.registry.files import manifest
from escalate.routers.registry import ROUTERS, make_router

PRICES = TokenPriceCost({"slm": (0.05, 0.1), "llm": (1.0, 2.0)})
SAMPLING = SamplingConfig(k=1, max_new_tokens=8, batch_size=4)


def test_each_kind_is_registered_under_its_own_name_and_offers_its_strategies() -> None:
    assert {name: kind.name for name, kind in KINDS.items()} == {"query": "query", "token": "token"}
    assert (QUERY_LEVEL, TOKEN_LEVEL) == ("query", "token")
    assert all(isinstance(kind_for(s), QueryLevel) for s in ROUTERS) and isinstance(kind_for(CITER), TokenLevel)
    with pytest.raises(ValueError, match="offers strategy 'llm_only'"):
        kind_for("llm_only")
    # Query-level bundles are served over model servers; a token-level one is decoded in the gateway.
    assert (KINDS["query"].needs_servers, KINDS["token"].needs_servers) == (True, False)
    assert len({kind.router_artifact for kind in KINDS.values()}) == len(KINDS)  # one bundle file name each


def test_self_hosted_is_the_backends_property_by_name() -> None:
    assert {name: is_self_hosted(name) for name in BACKENDS} == {"hf": True, "vllm": True, "openai": False}
    assert is_self_hosted("not-a-backend")  # make_backend is what refuses an unknown name
    with pytest.raises(ValueError, match="backend 'openai' needs an endpoint"):
        ModelConfig(name="api", source="gpt", backend="openai")


def test_the_registries_import_without_torch() -> None:
    code = "import sys, escalate.kinds, escalate.models.backends; print(sorted({'torch', 'vllm'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120).stdout
    assert out.strip() == "[]"


def test_the_query_kind_stages_and_loads_its_router(tmp_path: Path) -> None:
    kind = KINDS["query"]
    spec = CascadeSpec("random", 0.5, ModelConfig(name="s"), ModelConfig(name="l"), PRICES, SAMPLING,
                       router_kwargs={"seed": 3})
    router = kind.bundle_router(spec, None)  # remade from its name when none was fitted
    path, listed = kind.stage_router(router, tmp_path)
    assert (path.name, sorted(listed["router_files"])) == ("router_state", ["arrays.npz", "state.json"])
    loaded = kind.load_router(path, listed, {"slm": str(tmp_path)})
    assert type(loaded) is type(make_router("random", seed=3)) and loaded.seed == 3
    with pytest.raises(BundleError, match="lists no router_files"):
        kind.load_router(path, {}, {})
    (path / "state.json").write_text("not a state")
    with pytest.raises(BundleError, match=r"router checkpoint .* wrong size state\.json"):
        kind.load_router(path, listed, {})
    with pytest.raises(BundleError, match="does not load: router state in .* unreadable"):
        kind.load_router(path, {"router_files": manifest(path)}, {})
    legacy = tmp_path / "router.pkl"
    legacy.write_bytes(b"never read")
    with pytest.raises(BundleError, match=r"^router\.pkl: pickled routers are not loaded \(they can run code\); "
                                          "re-register the candidate$"):
        kind.load_router(legacy, listed, {})


def test_the_token_kind_refuses_what_it_cannot_bundle(tmp_path: Path) -> None:
    kind = KINDS["token"]
    spec = CascadeSpec(CITER, 0.5, ModelConfig(name="s"), ModelConfig(name="l"), PRICES, SAMPLING, kind="token")
    with pytest.raises(BundleError, match="token router's saved directory"):
        kind.bundle_router(spec, tmp_path)  # a directory, but no saved router in it
    with pytest.raises(BundleError, match="lists no router_files"):
        kind.load_router(tmp_path, {}, {})


class Echo(CascadeKind):
    """A kind that answers every question with itself: what a new kind needs, and nothing else."""

    name: ClassVar[str] = "echo"
    label: ClassVar[str] = "echo"
    router_artifact: ClassVar[str] = "echo.txt"
    needs_servers: ClassVar[bool] = False

    def offers(self, strategy: str) -> bool:
        return strategy == "echo"

    def find(self, strategy, profile, cost, stage_dir, test) -> Found:
        return Found(0.0, None, {}, 1.0, pd.DataFrame(), False, {})

    def check(self, spec: CascadeSpec) -> None:
        if spec.strategy != "echo":
            raise BundleError("an echo bundle's strategy is 'echo'")

    def bundle_router(self, spec, router):
        return router

    def stage_router(self, router, stage):
        (stage / self.router_artifact).write_text("echo")
        return stage / self.router_artifact, {}

    def load_router(self, path, raw, checkpoints):
        return path.read_text()

    def build(self, spec: CascadeSpec, checkpoints: Mapping[str, str], router: Any, overrides) -> Any:
        return (spec.kind, router)


def test_a_new_kind_is_one_class_and_one_registry_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(KINDS, "echo", Echo())
    spec = CascadeSpec("echo", 0.0, ModelConfig(name="s"), ModelConfig(name="l"), PRICES, SAMPLING, kind="echo")
    assert CascadeSpec.from_dict(spec.to_dict()) == spec
    assert build_cascade(spec, {}, "router") == ("echo", "router") and isinstance(kind_for("echo"), Echo)
    with pytest.raises(BundleError, match="strategy is 'echo'"):
        CascadeSpec("entropy", 0.0, ModelConfig(name="s"), ModelConfig(name="l"), PRICES, SAMPLING, kind="echo")
