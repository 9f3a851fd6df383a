"""What every training method shares: the loop's settings, LoRA, and turning a finished trainer into a
saved checkpoint and a summary.

TRL's configs default to bf16 and gradient checkpointing, which suit large models on GPUs; the zoo's
tiny models train on CPUs in fp32, so both are opt-in here. With `lora` set, TRL wraps the model in
PEFT adapters; the checkpoint saved is still a plain HF model (the adapters merged into the weights),
so sampling, vLLM and bundles never meet an adapter.

Nothing here assumes one process: under `accelerate launch` every rank trains, TRL's save gathers the
weights, and only the main process writes the merged model and the tokenizer.
"""

from __future__ import annotations

import shutil
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
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "logging_steps": 1,
        "save_strategy": "no",  # the caller saves the final model once; checkpoints would only cost disk
        "report_to": "none",  # MLflow logging is the pipeline's job, from the returned summary
        "disable_tqdm": True,
    }


def peft_config(cfg: LoopConfig, trainable_tokens: dict[str, list[int]] | None = None) -> Any:
    """PEFT's LoraConfig for cfg.lora (TRL's `peft_config`), or None for a full fine-tune.

    trainable_tokens: embedding rows that train beside the adapters, by module name (PEFT's
    trainable_token_indices): a token added to the vocabulary has no trained row for LoRA to adapt.
    """
    if cfg.lora is None:
        return None
    from peft import LoraConfig  # peft imports torch and transformers: seconds, as TRL does below

    return LoraConfig(task_type="CAUSAL_LM", r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=list(cfg.lora.target_modules), trainable_token_indices=trainable_tokens or None)


def with_bos(prompts: Iterable[str], bos: str | None) -> list[str]:
    """Prompts as the model saw them in pretraining and sees them at inference: after its bos token.

    The zoo's tokenizer adds no special tokens itself, and TRL tokenizes plain text as given.
    """
    return [f"{bos or ''}{p}" for p in prompts]


def train_on_completions(model_dir: str | Path, table: pd.DataFrame, cfg: LoopConfig, out_dir: str | Path,
                         trainable_tokens: dict[str, list[int]] | None = None) -> dict[str, Any]:
    """Supervised fine-tuning on a (prompt, completion) table, the loss on the completion only (the
    question is given, not learned); saves model + tokenizer to out_dir and returns train_and_save's summary.
    trainable_tokens: see peft_config (LoRA only)."""
    # TRL, datasets, transformers: seconds to import; the stage registry (so every CLI command) imports this module
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    data = Dataset.from_dict({"prompt": with_bos(table["prompt"], tokenizer.bos_token),
                              "completion": list(table["completion"])})
    args = SFTConfig(**trainer_args(cfg, out_dir), completion_only_loss=True)
    trainer = SFTTrainer(model=str(model_dir), args=args, train_dataset=data, processing_class=tokenizer,
                         peft_config=peft_config(cfg, trainable_tokens))
    if trainable_tokens:
        expose_head_bias(trainer.model)
    return train_and_save(trainer, out_dir, model_dir)


def expose_head_bias(model: Any) -> None:
    """Let TRL's fused LM head read PEFT's trainable-token wrapper on the output layer.

    TRL's SFT loss multiplies the hidden states by `lm_head.weight` and adds `lm_head.bias` itself; the
    wrapper answers `.weight` (the base rows with the trained ones in place, so they do train) but not
    `.bias` (TRL 1.16, PEFT 0.21). The wrapper is given the wrapped layer's bias (None for Llama and Qwen).
    """
    from peft.utils.other import TrainableTokensWrapper  # peft: seconds to import, as above

    for module in model.modules():
        if isinstance(module, TrainableTokensWrapper) and "bias" not in vars(module):
            module.bias = getattr(module.original_module, "bias", None)


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


def train_and_save(trainer: Any, out_dir: Path, model_dir: str | Path) -> dict[str, Any]:
    """Run the trainer (one progress bar named after out_dir), save model and tokenizer as a plain HF
    checkpoint (save_trained), and summarise the run."""
    from transformers import PrinterCallback, ProgressCallback  # seconds to import, as above

    for quiet in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(quiet)
    trainer.add_callback(progress_bar(f"train {out_dir.name}"))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    save_trained(trainer, out_dir, model_dir)
    losses = [float(e["loss"]) for e in trainer.state.log_history if "loss" in e]
    return {
        "steps": int(trainer.state.global_step),
        "loss": losses[-1] if losses else float("nan"),
        "losses": losses,
        "seconds": seconds,
        "n_examples": len(trainer.train_dataset),
    }


def save_trained(trainer: Any, out_dir: Path, model_dir: str | Path) -> None:
    """Save the trained model and its tokenizer to out_dir as a plain HF checkpoint, on every rank's behalf.

    A LoRA run saves its adapter first (trainer.save_model gathers it from every rank, as it gathers a
    full model), then the main process merges it into the base weights at model_dir and keeps only the
    merged model: everything downstream loads out_dir with AutoModelForCausalLM, adapter-free.
    """
    from accelerate.utils import is_peft_model  # accelerate imports torch: seconds, as above

    if not is_peft_model(trainer.model):
        trainer.save_model(str(out_dir))
    else:
        adapter = out_dir / "adapter"
        trainer.save_model(str(adapter))
        if trainer.is_world_process_zero():
            merge_adapter(model_dir, adapter, out_dir)
            shutil.rmtree(adapter)
    if trainer.is_world_process_zero():
        trainer.processing_class.save_pretrained(str(out_dir))
    trainer.accelerator.wait_for_everyone()


def merge_adapter(model_dir: str | Path, adapter_dir: Path, out_dir: Path) -> None:
    """Load the base checkpoint in its saved dtype, apply the adapter (LoRA and any trainable token rows),
    fold it into the weights and save the result to out_dir (which may be model_dir itself)."""
    # peft, transformers: seconds to import, as above
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="auto")
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(out_dir))
