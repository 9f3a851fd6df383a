"""SATER stage I: DPO that prefers the SLM's shortest correct response over longer or wrong ones.

The preferences table (escalate.train.preferences.build_preferences) holds plain-text prompts and
completions; the zoo's tokenizers have no chat template, so TRL tokenizes prompt + completion as
one string. Run from Python: `train_dpo("artifacts/tiny/zoo/slm", prefs, SaterDPOConfig(), out)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from escalate.config import _check
from escalate.train.loop import LoopConfig, train_and_save, trainer_args, with_bos


@dataclass
class SaterDPOConfig(LoopConfig):
    """Stage I: the loop's settings plus DPO's own."""

    beta: float = field(default=0.1, metadata={"help": "DPO's KL strength: higher stays closer to the base SLM"})
    sft_weight: float = field(default=0.0, metadata={
        "help": "weight of a negative log-likelihood loss on the chosen response beside DPO's (RPO; TRL's 'sft' "
                "loss type); 0: plain DPO"})

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(0 < self.beta <= 10, "beta", f"must be in (0, 10], got {self.beta}")
        _check(0 <= self.sft_weight <= 10, "sft_weight", f"must be in [0, 10], got {self.sft_weight}")

    def loss(self) -> dict[str, list]:
        """TRL's loss_type and loss_weights: DPO's sigmoid loss, plus the NLL on chosen when weighted."""
        if self.sft_weight == 0:
            return {"loss_type": ["sigmoid"], "loss_weights": [1.0]}
        return {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, self.sft_weight]}


def train_dpo(model_dir: str | Path, preferences: pd.DataFrame, cfg: SaterDPOConfig,
              out_dir: str | Path) -> dict[str, Any]:
    """Train the checkpoint at model_dir on the preferences table; save the result (model + tokenizer) to out_dir.

    The reference model is a second copy of the same checkpoint, loaded by TRL. Returns the summary
    of escalate.train.loop.train_and_save (steps, final loss, per-step losses, seconds).
    """
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    data = Dataset.from_dict({
        "prompt": with_bos(preferences["prompt"], tokenizer.bos_token),
        "chosen": list(preferences["chosen"]),
        "rejected": list(preferences["rejected"]),
    })
    args = DPOConfig(**trainer_args(cfg, out_dir), beta=cfg.beta, **cfg.loss())
    trainer = DPOTrainer(model=str(model_dir), args=args, train_dataset=data, processing_class=tokenizer)
    return train_and_save(trainer, out_dir)
