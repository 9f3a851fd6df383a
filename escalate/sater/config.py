"""SATER's profile section (`sater:`): how many train samples to draw, and the two stages' training configs.

Run `escalate config check --profile smoke` to see it filled. It imports only the leaf escalate.checks,
so escalate.config imports it to type the profile's section.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from escalate.checks import check
from escalate.train.config import LoopConfig


@dataclass
class SaterDPOConfig(LoopConfig):
    """Stage I: the loop's settings plus DPO's own."""

    beta: float = field(default=0.1, metadata={"help": "DPO's KL strength: higher stays closer to the base SLM"})
    sft_weight: float = field(default=0.0, metadata={
        "help": "weight of a negative log-likelihood loss on the chosen response beside DPO's (RPO; TRL's 'sft' "
                "loss type); 0: plain DPO"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 < self.beta <= 10, "beta", f"must be in (0, 10], got {self.beta}")
        check(0 <= self.sft_weight <= 10, "sft_weight", f"must be in [0, 10], got {self.sft_weight}")

    def loss(self) -> dict[str, list]:
        """TRL's loss_type and loss_weights: DPO's sigmoid loss, plus the NLL on chosen when weighted."""
        if self.sft_weight == 0:
            return {"loss_type": ["sigmoid"], "loss_weights": [1.0]}
        return {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, self.sft_weight]}


@dataclass
class SaterRefusalConfig(LoopConfig):
    """Stage II: the loop's settings plus the refusal threshold that builds the targets."""

    learning_rate: float = field(default=1e-4, metadata={"help": "peak AdamW learning rate (linear decay to 0)"})
    tau: float = field(default=0.5, metadata={
        "help": "refuse where the SLM's sampled accuracy p̂ is below tau (refusal_targets); swept in the report"})
    refusal_token: bool = field(default=True, metadata={
        "help": "add the refusal to the SLM's vocabulary as one token before training, so refusing costs one "
                "decode step (see the module); off keeps the tokenizer as it is"})

    def __post_init__(self) -> None:
        super().__post_init__()
        # tau = 0 would ask for a shortest correct response where no sample is correct.
        check(0 < self.tau <= 1, "tau", f"must be in (0, 1], got {self.tau}")


@dataclass
class SaterConfig:
    """The `sater:` section of a profile (`escalate sater train`)."""

    k_train: int = field(default=8, metadata={
        "help": "samples per train question (sample 0 greedy, the rest at sampling.temperature)"})
    dpo: SaterDPOConfig = field(default_factory=SaterDPOConfig, metadata={
        "help": "stage I: DPO towards the shortest correct response (escalate.sater.dpo)"})
    refusal: SaterRefusalConfig = field(default_factory=SaterRefusalConfig, metadata={
        "help": "stage II: SFT to answer or refuse, at threshold tau (escalate.sater.refusal_sft)"})
    tau_sweep: list[float] = field(default_factory=list, metadata={
        "help": "more refusal thresholds to train stage II at and report beside refusal.tau (each one more SFT "
                "run and greedy calib + test samples); the candidate cascades use refusal.tau"})

    def __post_init__(self) -> None:
        # p̂ needs more than one sample to be more than right-or-wrong.
        check(2 <= self.k_train <= 64, "k_train", f"must be in [2, 64], got {self.k_train}")
        check(all(0 < t <= 1 for t in self.tau_sweep), "tau_sweep", f"every τ must be in (0, 1], got {self.tau_sweep}")

    def taus(self) -> list[float]:
        """Every τ stage II is trained at, ascending, the profile's refusal.tau among them."""
        return sorted({float(self.refusal.tau), *map(float, self.tau_sweep)})
