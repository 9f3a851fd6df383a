"""The one interface every cascade kind implements: how its candidates are found, bundled, loaded and served.

A kind is how a cascade splits the work between the SLM and the LLM (whole questions, or tokens).
Everything that differs between kinds is a method or attribute here, so bundle.py, publish.py and
serving ask the bundle's kind instead of branching on its name; adding a kind is one module and
one line in escalate.kinds.KINDS.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import pandas as pd

if TYPE_CHECKING:  # for annotations only: building a cascade imports them when a kind is used
    from escalate.cascade import Answerer
    from escalate.config import Profile, SamplingConfig
    from escalate.evaluation.cost import CostModel
    from escalate.models.backends import ModelSettings


class BundleSpec(Protocol):
    """What a kind reads of a bundle's spec. escalate.registry.bundle.CascadeSpec is the one there is; it sits
    above the kinds (it checks itself through KINDS), so the kinds name its shape, not its module."""

    kind: str
    strategy: str
    threshold: float
    slm: ModelSettings
    llm: ModelSettings
    cost: CostModel
    sampling: SamplingConfig
    seed: int
    router_kwargs: dict[str, Any]


@dataclass(frozen=True)
class Found:
    """One candidate as its kind reads it from its stage's directory; publish adds the spec and registers it."""

    threshold: float  # the calib-chosen threshold (τ for a token-level cascade)
    router: Any  # what the bundle stages: a fitted Router, or a token router's saved directory
    row: Mapping[str, Any]  # its summary row: accuracy, normalized cost, ECE... at that threshold
    llm_accuracy: float  # LLM-only accuracy on the same test split
    outcomes: pd.DataFrame  # per test query at the threshold (gates.outcome_table), for the regression gate
    is_probability: bool  # whether its score is meant as P(SLM correct): the ECE gate applies
    router_kwargs: dict[str, Any]  # what the bundle's router is made with when it is remade from its name


class CascadeKind(ABC):
    """How one kind of cascade is found, bundled, loaded and served; one instance per kind, in KINDS."""

    name: ClassVar[str]  # its key in KINDS and cascade.json's `kind`
    label: ClassVar[str]  # how messages name it ("token-level")
    router_artifact: ClassVar[str]  # the router's name in the bundle: a file or a directory
    # Whether each self-hosted model is served by its own vLLM server (promote starts them, the gateway's
    # Engine calls them over HTTP); otherwise the gateway decodes the bundle in its own process.
    needs_servers: ClassVar[bool]

    @abstractmethod
    def offers(self, strategy: str) -> bool:
        """Whether `strategy` names a candidate of this kind."""

    @abstractmethod
    def find(self, strategy: str, profile: Profile, cost: CostModel, stage_dir: Path, test: pd.DataFrame) -> Found:
        """The candidate `strategy` from the directory of the stage that evaluated it, priced under `cost`."""

    def check(self, spec: BundleSpec) -> None:  # noqa: B027 (an optional hook: most kinds take any spec)
        """Raise BundleError when a spec is not one this kind can build (called by CascadeSpec itself)."""

    @abstractmethod
    def bundle_router(self, spec: BundleSpec, router: Any) -> Any:
        """The router to stage in a bundle, from log_bundle's `router` (a default where the kind has one)."""

    @abstractmethod
    def stage_router(self, router: Any, stage: Path) -> tuple[Path, dict[str, Any]]:
        """Write the router under `stage`: its path, and what cascade.json adds to check it by."""

    @abstractmethod
    def load_router(self, path: Path, raw: Mapping[str, Any], checkpoints: Mapping[str, str]) -> Any:
        """The bundled router at `path`, checked against cascade.json (`raw`) and bound to `checkpoints`."""

    @abstractmethod
    def build(self, spec: BundleSpec, checkpoints: Mapping[str, str], router: Any,
              overrides: Mapping[str, Mapping[str, Any]]) -> Answerer:
        """The cascade: what the pyfunc's predict and the gateway's engine answer with."""
