"""COREA's profile section (`corea:`): the warm-up's samples, the out-of-domain hold-out, both training configs.

Run `escalate config check --profile smoke` to see it filled. It imports only the leaf escalate.checks,
so escalate.config imports it to type the profile's section.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from escalate.checks import check
from escalate.train.config import LoopConfig


@dataclass
class CoreaWarmupConfig(LoopConfig):
    """The warm-up SFT: the loop's settings, with a learning rate that suits the zoo's small models."""

    learning_rate: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate (linear decay to 0)"})
    steps: int = field(default=100, metadata={"help": "optimizer steps (TRL's max_steps)"})


@dataclass
class CoreaGRPOConfig(LoopConfig):
    """GRPO: the loop's settings plus sampling and reward settings. `batch_size` counts completions."""

    learning_rate: float = field(default=1e-4, metadata={"help": "peak AdamW learning rate (linear decay to 0)"})
    batch_size: int = field(default=32, metadata={
        "help": "completions per device per forward pass (batch_size / num_generations prompts)"})
    max_length: int = field(default=96, metadata={
        "help": "tokens generated per completion (TRL's max_completion_length); prompts are kept whole"})
    calibration: bool = field(default=True, metadata={
        "help": "add the calibration reward (COREA); off is the RLVR baseline. The corea stage trains both"})
    num_generations: int = field(default=8, metadata={"help": "completions per prompt, compared within their group"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature of the completions"})
    beta: float = field(default=0.0, metadata={"help": "KL penalty towards the starting model (0: no reference model)"})
    calibration_weight: float = field(default=1.0, metadata={
        "help": "weight of the calibration reward (correctness and format weigh 1)"})
    scale_rewards: Literal["none", "group", "batch"] = field(default="none", metadata={
        "help": "divide advantages by the reward std of the group, the batch, or not at all (see the module)"})
    use_vllm: bool = field(default=False, metadata={
        "help": "generate the completions with vLLM colocated on the training GPU (TRL's use_vllm; needs vllm "
                "installed beside TRL and a GPU); off: transformers' generate"})
    vllm_gpu_memory: float = field(default=0.3, metadata={
        "help": "share of each GPU's memory vLLM may take for weights and KV cache (use_vllm only); the trainer "
                "keeps the rest"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check(2 <= self.num_generations <= 64, "num_generations", f"must be in [2, 64], got {self.num_generations}")
        check(self.batch_size * self.gradient_accumulation % self.num_generations == 0, "batch_size",
               f"must make batch_size * gradient_accumulation a multiple of num_generations ({self.num_generations}), "
               f"got {self.batch_size} * {self.gradient_accumulation}")
        check(0 < self.temperature <= 2, "temperature", f"must be in (0, 2], got {self.temperature}")
        check(0 <= self.beta <= 10, "beta", f"must be in [0, 10], got {self.beta}")
        check(0 < self.calibration_weight <= 10, "calibration_weight",
               f"must be in (0, 10], got {self.calibration_weight}")
        check(0 < self.vllm_gpu_memory < 1, "vllm_gpu_memory", f"must be in (0, 1), got {self.vllm_gpu_memory}")


@dataclass
class CoreaConfig:
    """The `corea:` section of a profile (`escalate corea train`)."""

    k_train: int = field(default=8, metadata={
        "help": "samples per train question whose accuracy p̂ is the warm-up's confidence target"})
    ood_min_difficulty: int | None = field(default=None, metadata={
        "help": "questions this hard or harder are left out of RL (not of the format warm-up) and reported as "
                "out-of-domain (null: no hold-out)"})
    warmup: CoreaWarmupConfig = field(default_factory=CoreaWarmupConfig, metadata={
        "help": "the supervised warm-up that teaches the format (escalate.corea.warmup)"})
    grpo: CoreaGRPOConfig = field(default_factory=CoreaGRPOConfig, metadata={
        "help": "GRPO, shared by the RLVR and COREA runs (escalate.corea.grpo)"})

    def __post_init__(self) -> None:
        # p̂ needs more than one sample to be more than right-or-wrong.
        check(2 <= self.k_train <= 64, "k_train", f"must be in [2, 64], got {self.k_train}")
        check(self.ood_min_difficulty is None or self.ood_min_difficulty >= 1, "ood_min_difficulty",
               f"must be >= 1 or null, got {self.ood_min_difficulty}")
