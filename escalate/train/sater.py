"""SATER's profile section: how many train samples to draw, and the two stages' training configs.

It lives beside the stages' configs rather than in escalate.config, because those configs import
escalate.config's checks; escalate.config resolves this type lazily when it loads a profile.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from escalate.config import _check
from escalate.train.sater_dpo import SaterDPOConfig
from escalate.train.sater_refusal import SaterRefusalConfig


@dataclass
class SaterConfig:
    """The `sater:` section of a profile (`escalate sater train`)."""

    k_train: int = field(default=8, metadata={
        "help": "samples per train question (sample 0 greedy, the rest at sampling.temperature)"})
    dpo: SaterDPOConfig = field(default_factory=SaterDPOConfig)
    refusal: SaterRefusalConfig = field(default_factory=SaterRefusalConfig)
    tau_sweep: list[float] = field(default_factory=list, metadata={
        "help": "more refusal thresholds to train stage II at and report beside refusal.tau (each one more SFT "
                "run and greedy calib + test samples); the candidate cascades use refusal.tau"})

    def __post_init__(self) -> None:
        # p̂ needs more than one sample to be more than right-or-wrong.
        _check(2 <= self.k_train <= 64, "k_train", f"must be in [2, 64], got {self.k_train}")
        _check(all(0 < t <= 1 for t in self.tau_sweep), "tau_sweep", f"every τ must be in (0, 1], got {self.tau_sweep}")

    def taus(self) -> list[float]:
        """Every τ stage II is trained at, ascending, the profile's refusal.tau among them."""
        return sorted({float(self.refusal.tau), *map(float, self.tau_sweep)})
