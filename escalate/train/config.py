"""The optimisation loop's settings, which every training method's config extends (escalate.train.loop runs it).

Apart from the loop so that escalate.config can import the method configs without importing pandas.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from escalate.checks import check

# Every linear projection of a Llama or Qwen2 block: attention (q, k, v, o) and MLP (gate, up, down).
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraConfig:
    """Low-rank adapters (PEFT's LoRA) instead of a full fine-tune; the saved checkpoint is the merged model."""

    r: int = field(default=16, metadata={"help": "rank of each adapter: trainable parameters grow linearly with it"})
    alpha: int = field(default=32, metadata={
        "help": "LoRA's scale numerator: the update is (alpha / r) * B @ A; 2r is the common choice"})
    dropout: float = field(default=0.05, metadata={"help": "dropout on the adapters' input during training"})
    target_modules: list[str] = field(default_factory=lambda: list(PROJECTIONS), metadata={
        "help": "module names that get adapters (Llama/Qwen2 names); the rest of the model stays frozen"})

    def __post_init__(self) -> None:
        check(1 <= self.r <= 1024, "r", f"must be in [1, 1024], got {self.r}")
        check(self.alpha >= 1, "alpha", f"must be >= 1, got {self.alpha}")
        check(0 <= self.dropout < 1, "dropout", f"must be in [0, 1), got {self.dropout}")
        check(bool(self.target_modules), "target_modules", "must name at least one module")


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
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "recompute activations in the backward pass: about a third more compute for far less memory "
                "(python -m escalate.memory sizes it)"})
    lora: LoraConfig | None = field(default=None, metadata={
        "help": "train LoRA adapters and save the merged model; null: a full fine-tune"})

    def __post_init__(self) -> None:
        check(0 < self.learning_rate < 1, "learning_rate", f"must be in (0, 1), got {self.learning_rate}")
        for key in ("steps", "batch_size", "gradient_accumulation"):
            check(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        check(0 <= self.warmup_steps < self.steps, "warmup_steps",
               f"must be in [0, steps), got {self.warmup_steps}")
        check(8 <= self.max_length <= 32_768, "max_length", f"must be in [8, 32768], got {self.max_length}")
