"""Checkpoint helpers: a tiny random model to train, whether training moved it, and a tiny SLM/LLM pair
that shares one tokenizer (what token-level routing needs)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from escalate.config import ArchConfig, ArithConfig
from escalate.models import zoo


def random_checkpoint(path: Path) -> Path:
    """A randomly initialised one-layer Llama with a zoo tokenizer, saved as an HF checkpoint at path."""
    pairs = zoo.corpus(ArithConfig(max_operand=9), 200, seed=1, exclude=set())
    tokenizer = zoo.train_tokenizer((p + c for p, c in pairs), vocab_size=300)
    model = zoo.build_model(ArchConfig(hidden_size=64, num_layers=1, num_heads=1, intermediate_size=64), tokenizer, 0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def weights_changed(before: Path, after: Path) -> bool:
    """Same parameter names in both checkpoints, and at least one tensor differs."""
    old = AutoModelForCausalLM.from_pretrained(before).state_dict()
    new = AutoModelForCausalLM.from_pretrained(after).state_dict()
    assert old.keys() == new.keys()
    return any(not torch.equal(old[k], new[k]) for k in old)


def random_pair(path: Path) -> tuple[Path, Path]:
    """Two random Llamas of different shapes (path/slm, path/llm) with one zoo tokenizer.

    Their initial weights are large, so logits are peaked and greedy choices are no near-ties that
    batching could flip; neither emits eos early, so answers run to max_new_tokens.
    """
    pairs = zoo.corpus(ArithConfig(max_operand=9), 200, seed=1, exclude=set())
    tokenizer = zoo.train_tokenizer((p + c for p, c in pairs), vocab_size=300)
    dirs = []
    for role, hidden, layers, seed in (("slm", 32, 1, 0), ("llm", 64, 2, 1)):
        torch.manual_seed(seed)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                             num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1, head_dim=hidden // 2,
                             initializer_range=0.3, max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        LlamaForCausalLM(config).save_pretrained(path / role)
        tokenizer.save_pretrained(path / role)
        dirs.append(path / role)
    return dirs[0], dirs[1]
