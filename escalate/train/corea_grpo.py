"""COREA's RL (arXiv 2603.03752): GRPO whose reward adds calibrated confidence to correctness.

GRPO samples `num_generations` completions per prompt, scores each with the reward functions of
escalate.train.corea_rewards, and pushes up the completions that beat their group's mean. With
`calibration` on (COREA) the reward is correctness + format + calibration; off, it is RLVR, the
baseline: correctness + format only, where nothing keeps the stated confidence honest. Both runs
start from the warm-up checkpoint (escalate.train.corea_warmup) with the same steps, data and seed.

Advantages are not divided by the group's reward std by default (Dr. GRPO's choice, TRL's
`scale_rewards="none"`). Dividing weights each group by how much its rewards happened to differ: a
group whose samples all failed differs only in stated confidence, so its tiny spread is blown up
and its push towards confidence 0 outweighs the mixed groups that pull towards the true rate.
That weight depends on the sampled outcomes, which biases the calibration reward away from the
probability it is proper for; on the tiny profile it drove confidences to 0 and 1.
Run from Python: `train_grpo("artifacts/tiny/corea/warmup", questions, CoreaGRPOConfig(), out)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from escalate.config import _check
from escalate.prompts import format_prompt
from escalate.sampling import grader_kind
from escalate.train.corea_rewards import reward_functions
from escalate.train.loop import LoopConfig, train_and_save, trainer_args, with_bos


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

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(2 <= self.num_generations <= 64, "num_generations", f"must be in [2, 64], got {self.num_generations}")
        _check(self.batch_size * self.gradient_accumulation % self.num_generations == 0, "batch_size",
               f"must make batch_size * gradient_accumulation a multiple of num_generations ({self.num_generations}), "
               f"got {self.batch_size} * {self.gradient_accumulation}")
        _check(0 < self.temperature <= 2, "temperature", f"must be in (0, 2], got {self.temperature}")
        _check(0 <= self.beta <= 10, "beta", f"must be in [0, 10], got {self.beta}")
        _check(0 < self.calibration_weight <= 10, "calibration_weight",
               f"must be in (0, 10], got {self.calibration_weight}")


def grpo_dataset(questions: pd.DataFrame, bos: str | None) -> dict[str, list]:
    """GRPO's columns: the prompt after bos, and what the rewards read (gold `answer`, grader `kind`)."""
    rows = [r for _, r in questions.iterrows()]
    kinds = [grader_kind(r) for r in rows]
    prompts = [format_prompt(r["question"], r["choices"] if k == "choice" else None) for r, k in zip(rows, kinds)]
    return {"prompt": with_bos(pd.Series(prompts), bos), "answer": [str(r["answer"]) for r in rows], "kind": kinds}


def train_grpo(model_dir: str | Path, questions: pd.DataFrame, cfg: CoreaGRPOConfig,
               out_dir: str | Path) -> dict[str, Any]:
    """Train the checkpoint at model_dir by GRPO on `questions` (a questions table); save to out_dir.

    Returns escalate.train.loop.train_and_save's summary plus `rewards`: per logged step, the mean of
    each reward function and of their weighted sum.
    """
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    funcs = reward_functions(cfg.calibration)
    common = trainer_args(cfg, out_dir)
    common.pop("max_length")  # GRPO keeps prompts whole and caps completions instead
    args = GRPOConfig(
        **common,
        max_completion_length=cfg.max_length,
        num_generations=cfg.num_generations,
        temperature=cfg.temperature,
        beta=cfg.beta,
        reward_weights=[1.0, 1.0, cfg.calibration_weight][: len(funcs)],
        scale_rewards=cfg.scale_rewards,
        disable_dropout=True,
    )
    trainer = GRPOTrainer(model=str(model_dir), reward_funcs=funcs, args=args,
                          train_dataset=Dataset.from_dict(grpo_dataset(questions, tokenizer.bos_token)),
                          processing_class=tokenizer)
    summary = train_and_save(trainer, out_dir)
    keys = {"reward": "reward", **{f.__name__: f"rewards/{f.__name__}/mean" for f in funcs}}
    summary["rewards"] = {name: [float(e[key]) for e in trainer.state.log_history if key in e]
                          for name, key in keys.items()}
    return summary
