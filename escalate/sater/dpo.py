"""SATER stage I: DPO that prefers the SLM's shortest correct response over longer or wrong ones.

The preferences table (escalate.sater.preferences.build_preferences) holds plain-text prompts and
completions; the zoo's tokenizers have no chat template, so TRL tokenizes prompt + completion as
one string. Run from Python: `train_dpo("artifacts/tiny/zoo/slm", prefs, SaterDPOConfig(), out)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from escalate.sater.config import SaterDPOConfig
from escalate.train.loop import peft_config, train_and_save, trainer_args, with_bos


def train_dpo(model_dir: str | Path, preferences: pd.DataFrame, cfg: SaterDPOConfig,
              out_dir: str | Path) -> dict[str, Any]:
    """Train the checkpoint at model_dir on the preferences table; save the result (model + tokenizer) to out_dir.

    The reference model is a second copy of the same checkpoint, loaded by TRL; with LoRA it is the same
    model with its adapters switched off, so no second copy is held. Returns the summary
    of escalate.train.loop.train_and_save (steps, final loss, per-step losses, seconds).
    """
    # TRL, datasets, transformers: seconds to import; the stage registry (so every CLI command) imports this module
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
    trainer = DPOTrainer(model=str(model_dir), args=args, train_dataset=data, processing_class=tokenizer,
                         peft_config=peft_config(cfg))
    return train_and_save(trainer, out_dir, model_dir)
