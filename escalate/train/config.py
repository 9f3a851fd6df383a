"""The optimisation loop's settings, which every training method's config extends (escalate.train.loop runs it).

Apart from the loop so that escalate.config can import the method configs without importing pandas.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from escalate.checks import check


@dataclass
class LoopConfig:
    """The optimisation loop of one training method; each method's config adds its own fields."""

    learning_rate: float = field(default=5e-6, metadata={"help": "peak AdamW learning rate (linear decay to 0)"})
    steps: int = field(default=200, metadata={"help": "optimizer steps (TRL's max_steps)"})
    batch_size: int = field(default=8, metadata={"help": "examples per device per forward pass"})
    gradient_accumulation: int = field(default=1, metadata={"help": "forward passes per optimizer step"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps"})
    max_length: int = field(default=256, metadata={"help": "prompt + completion tokens kept (longer ones are cut)"})
    seed: int = field(default=0, metadata={"help": "seeds data order and initialisation"})
    bf16: bool = field(default=False, metadata={"help": "bf16 mixed precision (GPUs only; the zoo trains in fp32)"})

    def __post_init__(self) -> None:
        check(0 < self.learning_rate < 1, "learning_rate", f"must be in (0, 1), got {self.learning_rate}")
        for key in ("steps", "batch_size", "gradient_accumulation"):
            check(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        check(0 <= self.warmup_steps < self.steps, "warmup_steps",
               f"must be in [0, steps), got {self.warmup_steps}")
        check(8 <= self.max_length <= 32_768, "max_length", f"must be in [8, 32768], got {self.max_length}")
