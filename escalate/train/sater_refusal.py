"""SATER stage II: supervised fine-tuning to answer (shortest correct response) or refuse.

The refusal_sft table (escalate.train.preferences.refusal_targets, at threshold `tau`) pairs each
prompt with its target completion; the loss covers the completion only, since the question is
given, not learned. Run from Python: `train_refusal(stage_one_dir, table, SaterRefusalConfig(), out)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from escalate.config import _check
from escalate.train.loop import LoopConfig, train_on_completions


@dataclass
class SaterRefusalConfig(LoopConfig):
    """Stage II: the loop's settings plus the refusal threshold that builds the targets."""

    learning_rate: float = field(default=1e-4, metadata={"help": "peak AdamW learning rate (linear decay to 0)"})
    tau: float = field(default=0.5, metadata={
        "help": "refuse where the SLM's sampled accuracy p̂ is below tau (refusal_targets); swept in the report"})

    def __post_init__(self) -> None:
        super().__post_init__()
        # tau = 0 would ask for a shortest correct response where no sample is correct.
        _check(0 < self.tau <= 1, "tau", f"must be in (0, 1], got {self.tau}")


def train_refusal(model_dir: str | Path, refusal_sft: pd.DataFrame, cfg: SaterRefusalConfig,
                  out_dir: str | Path) -> dict[str, Any]:
    """Fine-tune the checkpoint at model_dir on the refusal_sft table; save model + tokenizer to out_dir.

    Returns the summary of escalate.train.loop.train_and_save (steps, final loss, losses, seconds).
    """
    return train_on_completions(model_dir, refusal_sft, cfg, out_dir)
