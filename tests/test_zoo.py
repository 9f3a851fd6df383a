"""The zoo: tokenizer, model shape, and real pretraining steps that change the weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from escalate.config import ArchConfig, ArithConfig, PretrainConfig, ZooConfig, ZooModelConfig
from escalate.models import zoo


@pytest.fixture(scope="module")
def tokenizer():
    pairs = zoo.corpus(ArithConfig(max_operand=9), 200, seed=1, exclude=set())
    return zoo.train_tokenizer((p + c for p, c in pairs), vocab_size=300)


def test_tokenizer_splits_digits_and_round_trips(tokenizer) -> None:
    text = "Question: Ann has 35 apples.\nAnswer: 35 + 7 = 42. The answer is 42."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    pieces = tokenizer.convert_ids_to_tokens(tokenizer(" 42", add_special_tokens=False)["input_ids"])
    assert [p for p in pieces if p.strip("Ġ")] == ["4", "2"]  # every digit its own token


def test_corpus_excludes_held_out_questions() -> None:
    first = zoo.corpus(ArithConfig(max_operand=9, max_steps=1), 50, seed=3, exclude=set())
    held_out = {p.removeprefix("Question: ").removesuffix("\nAnswer:") for p, _ in first[:10]}
    again = zoo.corpus(ArithConfig(max_operand=9, max_steps=1), 50, seed=3, exclude=held_out)
    assert not {p.removeprefix("Question: ").removesuffix("\nAnswer:") for p, _ in again} & held_out


def test_loss_covers_only_the_completion(tokenizer) -> None:
    batch = zoo.collate(zoo.encode([("Question: Ann has 3 cups.\nAnswer:", " The answer is 3.")], tokenizer),
                        tokenizer.pad_token_id)
    labelled = tokenizer.decode(batch["labels"][0][batch["labels"][0] != -100])
    assert labelled.strip().startswith("The answer is 3.")


def test_pretrain_changes_weights_and_lowers_loss(tokenizer) -> None:
    model = zoo.build_model(ArchConfig(hidden_size=64, num_layers=1, num_heads=1, intermediate_size=64), tokenizer, 0)
    before = [p.detach().clone() for p in model.parameters()]
    examples = zoo.encode(zoo.corpus(ArithConfig(max_operand=9), 64, 2, set()), tokenizer)
    losses = zoo.pretrain(model, examples, PretrainConfig(steps=15, batch_size=8, lr=3e-3, warmup_steps=2),
                          tokenizer.pad_token_id, seed=0)
    assert len(losses) == 15
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def _tiny_zoo(ratio: float) -> ZooConfig:
    slm = ZooModelConfig(ArchConfig(64, 1, 1, 64, 64), PretrainConfig(steps=3, batch_size=4, warmup_steps=1))
    llm = ZooModelConfig(ArchConfig(128, 2, 2, 64, 256), PretrainConfig(steps=3, batch_size=4, warmup_steps=1))
    return ZooConfig(vocab_size=300, slm=slm, llm=llm, min_param_ratio=ratio)


def test_build_zoo_saves_hf_checkpoints(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    summary = zoo.build_zoo(_tiny_zoo(2.0), ArithConfig(max_operand=9), tmp_path, seed=0, exclude=set())
    assert summary["param_ratio"] >= 2.0
    for role in ("slm", "llm"):
        model = AutoModelForCausalLM.from_pretrained(tmp_path / role)
        assert model.config.head_dim == 64  # vLLM's CPU kernels need it
        assert AutoTokenizer.from_pretrained(tmp_path / role).eos_token == "</s>"
        assert len(json.loads((tmp_path / role / "losses.json").read_text())) == 3


def test_build_zoo_rejects_an_llm_too_small(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="min_param_ratio"):
        zoo.build_zoo(_tiny_zoo(1000.0), ArithConfig(max_operand=9), tmp_path, seed=0, exclude=set())
