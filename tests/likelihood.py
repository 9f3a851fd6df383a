"""What a checkpoint says about a completion: its summed log-probability after a prompt; greedy and sampled output.

The training tests read a method's effect through these, so a regression that still "trains" but moves
the model the wrong way fails. Prompt and completion are tokenized apart and joined, as TRL does, after
the bos token the trainers prepend (escalate.train.loop.with_bos).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def load(path: Path) -> tuple:
    """The checkpoint at path in eval mode, and its tokenizer."""
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@torch.inference_mode()
def completion_logprob(path: Path, pairs: list[tuple[str, str]]) -> list[float]:
    """log p(completion | bos + prompt), summed over the completion's tokens, for each (prompt, completion)."""
    model, tokenizer = load(path)
    out = []
    for prompt, completion in pairs:
        head = tokenizer(f"{tokenizer.bos_token}{prompt}", add_special_tokens=False)["input_ids"]
        tail = tokenizer(completion, add_special_tokens=False)["input_ids"]
        logits = model(torch.tensor([head + tail])).logits[0, len(head) - 1 : -1]
        out.append(float(torch.log_softmax(logits, -1).gather(1, torch.tensor(tail)[:, None]).sum()))
    return out


@torch.inference_mode()
def greedy(path: Path, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Each prompt's greedy continuation (after bos), decoded without special tokens."""
    model, tokenizer = load(path)
    texts = []
    for prompt in prompts:
        ids = torch.tensor([tokenizer(f"{tokenizer.bos_token}{prompt}", add_special_tokens=False)["input_ids"]])
        new = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:]
        texts.append(tokenizer.decode(new, skip_special_tokens=True))
    return texts


@torch.inference_mode()
def sample(path: Path, prompts: list[str], n: int, max_new_tokens: int, seed: int = 0) -> list[str]:
    """n continuations of each prompt at temperature 1 (as GRPO samples them), seeded; decoded without specials."""
    model, tokenizer = load(path)
    torch.manual_seed(seed)
    texts = []
    for prompt in prompts:
        ids = torch.tensor([tokenizer(f"{tokenizer.bos_token}{prompt}", add_special_tokens=False)["input_ids"]] * n)
        new = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=True, temperature=1.0, top_k=0,
                             pad_token_id=tokenizer.pad_token_id)[:, ids.shape[1]:]
        texts += tokenizer.batch_decode(new, skip_special_tokens=True)
    return texts
