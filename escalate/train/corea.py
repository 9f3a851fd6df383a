"""COREA's profile section: the warm-up's samples, the out-of-domain hold-out, and both training configs.

It lives beside the configs it holds rather than in escalate.config, because they import
escalate.config's checks; escalate.config resolves this type lazily when it loads a profile.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from escalate.config import _check
from escalate.train.corea_grpo import CoreaGRPOConfig
from escalate.train.corea_warmup import CoreaWarmupConfig


@dataclass
class CoreaConfig:
    """The `corea:` section of a profile (`escalate corea train`)."""

    k_train: int = field(default=8, metadata={
        "help": "samples per train question whose accuracy p̂ is the warm-up's confidence target"})
    ood_min_difficulty: int | None = field(default=None, metadata={
        "help": "questions this hard or harder are left out of RL (not of the format warm-up) and reported as "
                "out-of-domain (null: no hold-out)"})
    warmup: CoreaWarmupConfig = field(default_factory=CoreaWarmupConfig, metadata={
        "help": "the supervised warm-up that teaches the format (escalate.train.corea_warmup)"})
    grpo: CoreaGRPOConfig = field(default_factory=CoreaGRPOConfig, metadata={
        "help": "GRPO, shared by the RLVR and COREA runs (escalate.train.corea_grpo)"})

    def __post_init__(self) -> None:
        # p̂ needs more than one sample to be more than right-or-wrong.
        _check(2 <= self.k_train <= 64, "k_train", f"must be in [2, 64], got {self.k_train}")
        _check(self.ood_min_difficulty is None or self.ood_min_difficulty >= 1, "ood_min_difficulty",
               f"must be >= 1 or null, got {self.ood_min_difficulty}")
