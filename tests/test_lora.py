"""LoRA on every training path: a few real steps on a tiny Llama save a merged, adapter-free HF checkpoint whose
weights moved only where the adapters (and, for SATER's stage II, the refusal token's rows) were."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from escalate.config import ConfigError, from_dict, load_profile
from escalate.corea.grpo import train_grpo
from escalate.corea.warmup import train_warmup
from escalate.sater.config import SaterDPOConfig, SaterRefusalConfig
from escalate.sater.dpo import train_dpo
from escalate.sater.preferences import REFUSAL_COMPLETION
from escalate.sater.refusal_sft import add_refusal_token, refusal_rows, train_refusal
from escalate.train.config import LoopConfig, LoraConfig
from escalate.train.loop import peft_config
from tests.test_corea_train import QUESTIONS, ROOT
from tests.test_sater_train import PROMPTS

# Two of the seven projections, so that "only the targeted weights moved" says something.
TARGETS = ["q_proj", "up_proj"]
LORA = LoraConfig(r=4, alpha=8, dropout=0.0, target_modules=TARGETS)
TABLE = pd.DataFrame({"id": [f"q{i}" for i in range(4)], "prompt": PROMPTS,
                      "completion": [REFUSAL_COMPLETION, " The answer is 3.", REFUSAL_COMPLETION, " The answer is 5."],
                      "p_correct": [0.0, 1.0, 0.25, 0.75]})


def changed_rows(before: Path, after: Path) -> dict[str, list[int] | None]:
    """Each tensor that differs between two checkpoints of one shape: the rows that differ for an embedding
    matrix, None (the whole tensor) otherwise."""
    old = AutoModelForCausalLM.from_pretrained(before).state_dict()
    new = AutoModelForCausalLM.from_pretrained(after).state_dict()
    assert old.keys() == new.keys()
    out: dict[str, list[int] | None] = {}
    for key in old:
        if not torch.equal(old[key], new[key]):
            rows = (old[key] != new[key]).any(-1).nonzero().flatten().tolist()
            out[key] = rows if "embed" in key or "lm_head" in key else None
    return out


def assert_plain_checkpoint(out: Path) -> None:
    """No adapter left: no adapter files, no lora_ keys, and AutoModelForCausalLM loads it."""
    assert not list(out.rglob("adapter_*")) and not (out / "adapter").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    assert not [k for k in model.state_dict() if "lora_" in k or "token_adapter" in k]
    assert (out / "tokenizer.json").is_file()


def only_targets(changed: dict) -> bool:
    return bool(changed) and all(any(f".{t}." in key for t in TARGETS) for key in changed)


def test_no_lora_is_a_full_fine_tune_and_lora_becomes_peft_config() -> None:
    assert LoopConfig().lora is None and peft_config(LoopConfig()) is None
    built = peft_config(LoopConfig(lora=LORA), {"embed_tokens": [7]})
    assert (built.r, built.lora_alpha, built.lora_dropout) == (4, 8, 0.0)
    assert set(built.target_modules) == set(TARGETS) and built.trainable_token_indices == {"embed_tokens": [7]}
    assert peft_config(LoopConfig(lora=LoraConfig())).trainable_token_indices is None
    assert set(LoraConfig().target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                "down_proj"}


@pytest.mark.parametrize(("data", "key"), [({"r": 0}, "r"), ({"alpha": 0}, "alpha"), ({"dropout": 1.0}, "dropout"),
                                           ({"target_modules": []}, "target_modules")])
def test_bad_lora_values_fail_at_load_naming_the_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"sater\.dpo\.lora\.{key}: must"):
        from_dict(SaterDPOConfig, {"lora": data}, source="p.yaml", where="sater.dpo")


def test_lora_fields_carry_help_text() -> None:
    for cls in (LoraConfig, LoopConfig):
        assert all(f.metadata.get("help") for f in fields(cls)), cls.__name__


def test_lora_sft_saves_a_merged_checkpoint_changed_only_where_lora_targeted(base_model: Path, tmp_path: Path) -> None:
    cfg = replace(load_profile("smoke", root=ROOT).corea.warmup, steps=3, batch_size=2, learning_rate=1e-2, lora=LORA)
    summary = train_warmup(base_model, TABLE, cfg, tmp_path / "sft")
    assert summary["steps"] == 3
    assert_plain_checkpoint(tmp_path / "sft")
    assert only_targets(changed_rows(base_model, tmp_path / "sft"))


def test_lora_dpo_saves_a_merged_checkpoint_changed_only_where_lora_targeted(base_model: Path, tmp_path: Path) -> None:
    prefs = pd.DataFrame({"id": [f"q{i}" for i in range(4)], "prompt": PROMPTS,
                          "chosen": [f" The answer is {n + 2}." for n in range(4)],
                          "rejected": [f" {n} + 2 = {n + 3}. The answer is {n + 3}." for n in range(4)]})
    cfg = SaterDPOConfig(learning_rate=1e-2, steps=3, batch_size=2, max_length=128, lora=LORA)
    summary = train_dpo(base_model, prefs, cfg, tmp_path / "dpo")
    assert summary["steps"] == 3
    assert_plain_checkpoint(tmp_path / "dpo")
    assert only_targets(changed_rows(base_model, tmp_path / "dpo"))


def test_lora_grpo_saves_a_merged_checkpoint_changed_only_where_lora_targeted(base_model: Path, tmp_path: Path) -> None:
    cfg = replace(load_profile("smoke", root=ROOT).corea.grpo, learning_rate=1e-2, lora=LORA)
    train_grpo(base_model, QUESTIONS, cfg, tmp_path / "grpo")
    assert_plain_checkpoint(tmp_path / "grpo")
    assert only_targets(changed_rows(base_model, tmp_path / "grpo"))


def untied(base_model: Path, out: Path) -> Path:
    """base_model's shape with an output layer of its own (Qwen2.5-7B's case), randomly initialised."""
    config = AutoConfig.from_pretrained(base_model)
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(base_model).save_pretrained(out)
    return out


@pytest.mark.parametrize("tied", [True, False])
def test_lora_refusal_sft_trains_the_refusal_token_rows_beside_the_adapters(base_model: Path, tmp_path: Path,
                                                                            tied: bool) -> None:
    start = base_model if tied else untied(base_model, tmp_path / "untied")
    reference = add_refusal_token(start, tmp_path / "with_token")  # what stage II starts from, deterministically
    (token,) = AutoTokenizer.from_pretrained(reference)(REFUSAL_COMPLETION, add_special_tokens=False)["input_ids"]
    rows = refusal_rows(reference)
    assert rows == ({"embed_tokens": [token]} if tied else {"embed_tokens": [token], "lm_head": [token]})

    cfg = SaterRefusalConfig(learning_rate=1e-2, steps=3, batch_size=2, max_length=128, lora=LORA)
    train_refusal(start, TABLE, cfg, tmp_path / "sft")
    assert_plain_checkpoint(tmp_path / "sft")
    changed = changed_rows(reference, tmp_path / "sft")
    embeddings = {k: v for k, v in changed.items() if v is not None}
    assert only_targets({k: v for k, v in changed.items() if v is None})
    assert embeddings["model.embed_tokens.weight"] == [token]
    if not tied:
        assert embeddings["lm_head.weight"] == [token]
    assert set(embeddings) <= {"model.embed_tokens.weight", "lm_head.weight"}
