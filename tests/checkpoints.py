"""Checkpoint helpers for the training tests: a tiny random model to train, and whether training moved it."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

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
