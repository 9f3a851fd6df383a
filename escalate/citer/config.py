"""CITER's profile section: where token labels come from, the router's shape and training, the τ sweep.

Run `escalate config check --profile smoke` to see it filled. It imports only the leaf escalate.checks,
so escalate.config imports it to type the profile's section.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from escalate.checks import check
from escalate.data.schema import SPLITS


@dataclass
class CiterRouterConfig:
    """The token router: an MLP on the SLM's last hidden state giving P(LLM needed)."""

    hidden_sizes: list[int] = field(default_factory=lambda: [128, 64], metadata={
        "help": "widths of the hidden layers (two: the paper's three-layer MLP)"})
    epochs: int = field(default=30, metadata={"help": "passes over the labelled positions"})
    batch_size: int = field(default=512, metadata={"help": "labelled positions per optimizer step"})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    val_fraction: float = field(default=0.1, metadata={
        "help": "share of labelled questions held out: early stopping on their loss, and the router's AUROC"})

    def __post_init__(self) -> None:
        check(bool(self.hidden_sizes) and all(h >= 1 for h in self.hidden_sizes), "hidden_sizes",
               f"must be a non-empty list of widths >= 1, got {self.hidden_sizes}")
        for key in ("epochs", "batch_size"):
            check(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        check(0 < self.learning_rate < 1, "learning_rate", f"must be in (0, 1), got {self.learning_rate}")
        check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        check(0 < self.val_fraction < 0.5, "val_fraction", f"must be in (0, 0.5), got {self.val_fraction}")


@dataclass
class CiterConfig:
    """The `citer:` section of a profile (`escalate citer train`)."""

    reference_key: str = field(default="steps", metadata={
        "help": "the questions' `meta` key holding the reference solution (arith: terse|steps|padded; gsm8k: solution)"})
    max_train_questions: int | None = field(default=None, metadata={
        "help": "label at most this many train questions (the first ones); null: all"})
    rollout_tau: float | None = field(default=None, metadata={
        "help": "round 2's rollouts continue under the round-1 router at this τ (the LLM writes when P > τ); "
                "null: the τ chosen for round 1 on select_split"})
    batch_size: int = field(default=128, metadata={"help": "sequences decoded together (rollouts and the τ sweep)"})
    n_taus: int = field(default=21, metadata={
        "help": "points of the τ sweep: τ = 0, τ = 1 and quantiles of the router's scores on its training positions"})
    select_split: str = field(default="calib", metadata={
        "help": "split whose sweep picks τ (the cheapest point within evaluation.delta of LLM-only accuracy)"})
    latency_queries: int = field(default=8, metadata={
        "help": "questions decoded one at a time at each swept τ to time a single request; 0: no timing"})
    router: CiterRouterConfig = field(default_factory=CiterRouterConfig, metadata={
        "help": "the token router's shape and training, the same for both rounds"})

    def __post_init__(self) -> None:
        check(bool(self.reference_key.strip()), "reference_key", "must not be empty")
        check(self.max_train_questions is None or self.max_train_questions >= 1, "max_train_questions",
               f"must be >= 1, got {self.max_train_questions}")
        check(self.rollout_tau is None or 0 <= self.rollout_tau <= 1, "rollout_tau",
               f"must be in [0, 1], got {self.rollout_tau}")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(3 <= self.n_taus <= 201, "n_taus", f"must be in [3, 201], got {self.n_taus}")
        check(self.select_split in SPLITS and self.select_split != "train", "select_split",
               f"must be calib or test, got {self.select_split!r}")
        check(self.latency_queries >= 0, "latency_queries", f"must be >= 0, got {self.latency_queries}")
