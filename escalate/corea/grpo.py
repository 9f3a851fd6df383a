"""COREA's RL (arXiv 2603.03752): GRPO whose reward adds calibrated confidence to correctness.

GRPO samples `num_generations` completions per prompt, scores each with the reward functions of
escalate.corea.rewards, and pushes up the completions that beat their group's mean. With
`calibration` on (COREA) the reward is correctness + format + calibration; off, it is RLVR, the
baseline: correctness + format only, where nothing keeps the stated confidence honest. Both runs
start from the warm-up checkpoint (escalate.corea.warmup) with the same steps, data and seed.

Advantages are not divided by the group's reward std by default (Dr. GRPO's choice, TRL's
`scale_rewards="none"`). Dividing weights each group by how much its rewards happened to differ: a
group whose samples all failed differs only in stated confidence, so its tiny spread is blown up
and its push towards confidence 0 outweighs the mixed groups that pull towards the true rate.
That weight depends on the sampled outcomes, which biases the calibration reward away from the
probability it is proper for; on the tiny profile it drove confidences to 0 and 1.
Run from Python: `train_grpo("artifacts/tiny/corea/warmup", questions, CoreaGRPOConfig(), out)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from escalate.checks import ConfigError
from escalate.corea.config import CoreaGRPOConfig
from escalate.corea.rewards import reward_functions
from escalate.prompts import format_prompt
from escalate.sampling import grader_kind
from escalate.train.loop import peft_config, train_and_save, trainer_args, with_bos


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
    # TRL, datasets, transformers: seconds to import; the stage registry (so every CLI command) imports this module
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer
    from trl.import_utils import is_vllm_available

    if cfg.use_vllm and not is_vllm_available():
        raise ConfigError("corea.grpo.use_vllm: TRL generates with vLLM in the training process, and vllm is not "
                          "installed beside TRL here; install it (a CUDA build, on a GPU) or set use_vllm: false")
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
        use_vllm=cfg.use_vllm,  # colocated: vLLM shares the training GPU(s) (TRL's default vllm_mode)
        vllm_gpu_memory_utilization=cfg.vllm_gpu_memory,
    )
    trainer = GRPOTrainer(model=str(model_dir), reward_funcs=funcs, args=args,
                          train_dataset=Dataset.from_dict(grpo_dataset(questions, tokenizer.bos_token)),
                          processing_class=tokenizer, peft_config=peft_config(cfg))
    summary = train_and_save(trainer, out_dir, model_dir)
    keys = {"reward": "reward", **{f.__name__: f"rewards/{f.__name__}/mean" for f in funcs}}
    summary["rewards"] = {name: [float(e[key]) for e in trainer.state.log_history if key in e]
                          for name, key in keys.items()}
    return summary
