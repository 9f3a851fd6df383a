"""What every training method shares: the loop's settings and turning a finished trainer into a summary.

TRL's configs default to bf16 and gradient checkpointing, which suit large models on GPUs; the zoo's
tiny models train on CPUs in fp32, so both are opt-in here.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from escalate.train.config import LoopConfig


def trainer_args(cfg: LoopConfig, out_dir: Path) -> dict[str, Any]:
    """TRL config keyword arguments common to every method: no checkpoints, no trackers, a log every step."""
    return {
        "output_dir": str(out_dir),
        "max_steps": cfg.steps,
        "per_device_train_batch_size": cfg.batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation,
        "learning_rate": cfg.learning_rate,
        "warmup_steps": cfg.warmup_steps,
        "max_length": cfg.max_length,
        "seed": cfg.seed,
        "bf16": cfg.bf16,
        "gradient_checkpointing": False,
        "logging_steps": 1,
        "save_strategy": "no",  # the caller saves the final model once; checkpoints would only cost disk
        "report_to": "none",  # MLflow logging is the pipeline's job, from the returned summary
        "disable_tqdm": True,
    }


def with_bos(prompts: Iterable[str], bos: str | None) -> list[str]:
    """Prompts as the model saw them in pretraining and sees them at inference: after its bos token.

    The zoo's tokenizer adds no special tokens itself, and TRL tokenizes plain text as given.
    """
    return [f"{bos or ''}{p}" for p in prompts]


def train_on_completions(model_dir: str | Path, table: pd.DataFrame, cfg: LoopConfig, out_dir: str | Path) -> dict[str, Any]:
    """Supervised fine-tuning on a (prompt, completion) table, the loss on the completion only (the
    question is given, not learned); saves model + tokenizer to out_dir and returns train_and_save's summary."""
    # TRL, datasets, transformers: seconds to import; the stage registry (so every CLI command) imports this module
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    data = Dataset.from_dict({"prompt": with_bos(table["prompt"], tokenizer.bos_token),
                              "completion": list(table["completion"])})
    args = SFTConfig(**trainer_args(cfg, out_dir), completion_only_loss=True)
    trainer = SFTTrainer(model=str(model_dir), args=args, train_dataset=data, processing_class=tokenizer)
    return train_and_save(trainer, out_dir)


def progress_bar(desc: str) -> Any:
    """A TrainerCallback that draws one progress bar with the latest loss, in place of the log dict per step
    that transformers prints when its own bar is off (the losses stay in the trainer's log history)."""
    # transformers: seconds to import, as above (tqdm comes with it)
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class LossBar(TrainerCallback):
        bar: Any = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.bar = tqdm(total=state.max_steps, desc=desc, unit="step", dynamic_ncols=True)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if self.bar is not None and logs and "loss" in logs:
                self.bar.set_postfix(loss=f"{float(logs['loss']):.3f}")

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.bar is not None:
                self.bar.close()

    return LossBar()


def train_and_save(trainer: Any, out_dir: Path) -> dict[str, Any]:
    """Run the trainer (one progress bar named after out_dir), save model and tokenizer as a plain HF
    checkpoint, and summarise the run."""
    from transformers import PrinterCallback, ProgressCallback  # seconds to import, as above

    for quiet in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(quiet)
    trainer.add_callback(progress_bar(f"train {out_dir.name}"))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    trainer.save_model(str(out_dir))
    trainer.processing_class.save_pretrained(str(out_dir))
    losses = [float(e["loss"]) for e in trainer.state.log_history if "loss" in e]
    return {
        "steps": int(trainer.state.global_step),
        "loss": losses[-1] if losses else float("nan"),
        "losses": losses,
        "seconds": seconds,
        "n_examples": len(trainer.train_dataset),
    }
