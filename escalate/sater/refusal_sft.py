"""SATER stage II: supervised fine-tuning to answer (shortest correct response) or refuse.

The refusal_sft table (escalate.sater.preferences.refusal_targets, at threshold `tau`) pairs each
prompt with its target completion; the loss covers the completion only, since the question is
given, not learned. Run from Python: `train_refusal(stage_one_dir, table, SaterRefusalConfig(), out)`.

A refusal saves time only if it is short: SATER's cascade escalates at once on it, and its AROL is
the SLM time spent before escalating. A large model's vocabulary spells the refusal in a handful of
tokens; the zoo's 400-token byte-level BPE, trained on arithmetic alone, spells it in 22, as long as an
answer. So by default the refusal becomes one token of the SLM's vocabulary before stage II
(`add_refusal_token`), its embedding starting as the mean of the pieces that spelled it: refusing then
costs one decode step (and eos) whatever the tokenizer. With LoRA the new token's rows (input, and
output where untied) train beside the adapters (`refusal_rows`): its mean-of-pieces start is no answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from escalate.sater.config import SaterRefusalConfig
from escalate.sater.preferences import REFUSAL_COMPLETION
from escalate.train.loop import train_on_completions


def add_refusal_token(model_dir: str | Path, out_dir: str | Path) -> Path:
    """Save model_dir's checkpoint to out_dir with REFUSAL_COMPLETION as one added token of its vocabulary.

    The new token's input row, and its output row where the output layer is not tied to the input
    (the zoo's is), start as the means of the rows of the tokens that spelled the refusal, so the
    model starts from what it already knew of them. A model whose embedding matrix is padded beyond
    its tokenizer (Qwen's) keeps its size and the new id takes a padding row. A tokenizer that already
    has the token is saved unchanged.
    """
    # torch, transformers: seconds to import; the stage registry (so every CLI command) imports this module
    import torch
    from transformers import AddedToken, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    pieces = tokenizer(REFUSAL_COMPLETION, add_special_tokens=False)["input_ids"]
    if len(pieces) > 1:
        tokenizer.add_tokens([AddedToken(REFUSAL_COMPLETION, normalized=False, special=False)])
        new_id = tokenizer.convert_tokens_to_ids(REFUSAL_COMPLETION)
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            rows = [model.get_input_embeddings().weight]
            output = model.get_output_embeddings()
            if output is not None and output.weight.data_ptr() != rows[0].data_ptr():
                rows.append(output.weight)
            for weight in rows:
                weight[new_id] = weight[pieces].mean(0)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return Path(out_dir)


def refusal_rows(model_dir: str | Path) -> dict[str, list[int]]:
    """The embedding rows of the token(s) spelling the refusal (one after add_refusal_token), by module name
    (PEFT's trainable_token_indices): the input embedding's, and the output layer's too where it is not tied
    to the input (a tied one follows)."""
    from transformers import AutoConfig, AutoTokenizer  # seconds to import, as above

    ids = sorted(set(AutoTokenizer.from_pretrained(str(model_dir))(REFUSAL_COMPLETION, add_special_tokens=False)["input_ids"]))
    tied = AutoConfig.from_pretrained(str(model_dir)).tie_word_embeddings
    return {"embed_tokens": ids} if tied else {"embed_tokens": ids, "lm_head": ids}


def train_refusal(model_dir: str | Path, refusal_sft: pd.DataFrame, cfg: SaterRefusalConfig,
                  out_dir: str | Path) -> dict[str, Any]:
    """Fine-tune the checkpoint at model_dir on the refusal_sft table; save model + tokenizer to out_dir.

    With cfg.refusal_token the refusal is first made one token (add_refusal_token, into out_dir, which
    training then starts from and overwrites); with LoRA its rows train too (refusal_rows). Returns
    escalate.train.loop.train_and_save's summary.
    """
    if not cfg.refusal_token:
        return train_on_completions(model_dir, refusal_sft, cfg, out_dir)
    start = add_refusal_token(model_dir, out_dir)
    rows = refusal_rows(start) if cfg.lora is not None else None
    return train_on_completions(start, refusal_sft, cfg, out_dir, trainable_tokens=rows)
