"""COREA's warm-up: a short supervised pass that teaches the SLM to end each answer with its confidence.

RL can only reinforce what the model already samples; a model that never writes "Confidence: 0.xx"
earns no format or calibration reward to learn from. So before GRPO, the SLM is fine-tuned on its
own responses with the confidence appended, the target being its sampled accuracy p̂ on
that question (the share of its K samples graded correct): a calibrated starting point, not a
guess. The answers are the SLM's own, so the warm-up teaches the format without teaching new
arithmetic. Run from Python: `train_warmup(zoo_slm_dir, warmup_targets(samples, questions), cfg, out)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from escalate.corea.confidence import with_confidence
from escalate.corea.config import CoreaWarmupConfig
from escalate.prompts import format_prompt
from escalate.train.loop import train_on_completions

# The table has the refusal_sft contract's columns (prompt, completion, p_correct), and is validated by that suite.
WARMUP_COLUMNS = ["id", "prompt", "completion", "p_correct"]


def warmup_targets(samples: pd.DataFrame, questions: pd.DataFrame) -> pd.DataFrame:
    """Per question: the prompt, the SLM's response + " Confidence: p̂", and p̂.

    `samples` are one model's K graded samples per question. The response is the greedy one
    (sample_idx 0), or where that is blank the first sampled one that is not: there must be an
    answer to attach a confidence to. A question with no non-blank sample gives no row.
    """
    models = samples["model"].unique()
    if len(models) > 1:
        raise ValueError(f"samples of one model expected, got {sorted(models)}")
    p_hat = samples.groupby("id")["correct"].mean()
    spoken = samples[samples["text"].str.strip().astype(bool)].sort_values("sample_idx", kind="stable")
    response = spoken.groupby("id")["text"].first()
    rows = []
    for q in questions.itertuples(index=False):
        if q.id not in response:
            continue
        choices = getattr(q, "choices", None)
        rows.append({
            "id": q.id,
            "prompt": format_prompt(q.question, choices if isinstance(choices, str) and choices.strip() else None),
            "completion": with_confidence(response[q.id], float(p_hat[q.id])),
            "p_correct": float(p_hat[q.id]),
        })
    return pd.DataFrame(rows, columns=WARMUP_COLUMNS)


def train_warmup(model_dir: str | Path, targets: pd.DataFrame, cfg: CoreaWarmupConfig,
                 out_dir: str | Path) -> dict[str, Any]:
    """Fine-tune the checkpoint at model_dir on the warm-up table (loss on the completion only); save to out_dir.

    Returns the summary of escalate.train.loop.train_and_save (steps, final loss, losses, seconds).
    """
    return train_on_completions(model_dir, targets, cfg, out_dir)
