"""SATER's two training stages run a few real steps on a tiny Llama and change its weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from escalate.config import ConfigError, from_dict
from escalate.sater.config import SaterDPOConfig, SaterRefusalConfig
from escalate.sater.dpo import train_dpo
from escalate.sater.preferences import REFUSAL_COMPLETION
from escalate.sater.refusal_sft import add_refusal_token, train_refusal
from tests.checkpoints import weights_changed

PROMPTS = [f"Question: Ann has {n} cups. Then buys 2. How many cups does Ann have now?\nAnswer:" for n in range(4)]


def test_dpo_trains_real_steps_and_changes_the_weights(base_model: Path, tmp_path: Path) -> None:
    prefs = pd.DataFrame({
        "id": [f"q{i}" for i in range(4)], "prompt": PROMPTS,
        "chosen": [f" The answer is {n + 2}." for n in range(4)],
        "rejected": [f" Ann starts with {n} cups. Then buys 2, so {n} + 2 = {n + 3}. The answer is {n + 3}."
                     for n in range(4)],
    })
    cfg = SaterDPOConfig(learning_rate=1e-3, steps=3, batch_size=2, max_length=128, beta=0.1)
    summary = train_dpo(base_model, prefs, cfg, tmp_path / "dpo")
    assert summary["steps"] == 3 and len(summary["losses"]) == 3
    assert summary["losses"][0] == pytest.approx(math.log(2), abs=1e-3)  # policy == reference at step 1
    assert weights_changed(base_model, tmp_path / "dpo")
    assert json.loads((tmp_path / "dpo" / "tokenizer_config.json").read_text())["eos_token"] == "</s>"


def test_dpo_with_an_nll_anchor_on_chosen_trains_and_weighs_both_losses(base_model: Path, tmp_path: Path) -> None:
    prefs = pd.DataFrame({"id": ["q0", "q1"], "prompt": PROMPTS[:2],
                          "chosen": [" The answer is 2.", " The answer is 3."],
                          "rejected": [" 0 + 2 = 3. The answer is 3.", " 1 + 2 = 4. The answer is 4."]})
    cfg = SaterDPOConfig(learning_rate=1e-3, steps=2, batch_size=2, max_length=128, beta=0.1, sft_weight=0.5)
    assert cfg.loss() == {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]}
    assert SaterDPOConfig().loss() == {"loss_type": ["sigmoid"], "loss_weights": [1.0]}
    summary = train_dpo(base_model, prefs, cfg, tmp_path / "rpo")
    # at step 1 policy == reference: DPO's log 2 plus half the chosen responses' mean NLL, which is positive
    assert summary["losses"][0] > math.log(2) + 0.1
    assert weights_changed(base_model, tmp_path / "rpo")


def test_refusal_sft_trains_real_steps_and_changes_the_weights(base_model: Path, tmp_path: Path) -> None:
    table = pd.DataFrame({
        "id": [f"q{i}" for i in range(4)], "prompt": PROMPTS,
        "completion": [REFUSAL_COMPLETION, " The answer is 3.", REFUSAL_COMPLETION, " The answer is 5."],
        "p_correct": [0.0, 1.0, 0.25, 0.75],
    })
    cfg = SaterRefusalConfig(learning_rate=1e-3, steps=3, batch_size=2, max_length=128)
    summary = train_refusal(base_model, table, cfg, tmp_path / "sft")
    assert summary["steps"] == 3 and all(math.isfinite(x) for x in summary["losses"])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    layer = "model.layers.0.mlp.up_proj.weight"  # not the embedding, which the added token resized
    before, after = (AutoModelForCausalLM.from_pretrained(d).state_dict()[layer] for d in (base_model, tmp_path / "sft"))
    assert not torch.equal(before, after)

    trained = AutoTokenizer.from_pretrained(tmp_path / "sft")
    assert len(trained(REFUSAL_COMPLETION, add_special_tokens=False)["input_ids"]) == 1  # refusal_token on by default
    kept = train_refusal(base_model, table, SaterRefusalConfig(learning_rate=1e-3, steps=3, batch_size=2,
                                                               max_length=128, refusal_token=False), tmp_path / "plain")
    assert kept["steps"] == 3 and weights_changed(base_model, tmp_path / "plain")


def test_the_refusal_becomes_one_token_whose_embedding_starts_at_its_pieces_mean(base_model: Path,
                                                                               tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    before = AutoTokenizer.from_pretrained(base_model)
    pieces = before(REFUSAL_COMPLETION, add_special_tokens=False)["input_ids"]
    assert len(pieces) > 1  # the zoo's arithmetic BPE spells it out
    out = add_refusal_token(base_model, tmp_path / "one")
    tokenizer, model = AutoTokenizer.from_pretrained(out), AutoModelForCausalLM.from_pretrained(out)
    ids = tokenizer(REFUSAL_COMPLETION, add_special_tokens=False)["input_ids"]
    assert ids == [len(before)] and tokenizer.decode(ids) == REFUSAL_COMPLETION
    assert model.get_input_embeddings().num_embeddings == len(before) + 1
    other = "Answer: 12"
    assert tokenizer(other, add_special_tokens=False)["input_ids"] == before(other, add_special_tokens=False)["input_ids"]
    old = AutoModelForCausalLM.from_pretrained(base_model).get_input_embeddings().weight
    new = model.get_input_embeddings().weight
    assert torch.allclose(new[-1], old[pieces].mean(0)) and torch.equal(new[:-1], old)
    assert model.get_output_embeddings().weight.data_ptr() == new.data_ptr()  # still tied
    assert add_refusal_token(out, tmp_path / "again") and len(AutoTokenizer.from_pretrained(tmp_path / "again")) == len(tokenizer)


def test_an_untied_padded_vocabulary_keeps_its_size_and_starts_both_rows_at_the_pieces(base_model: Path,
                                                                                       tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    padded = len(tokenizer) + 8  # room beyond the tokenizer, as Qwen's embedding matrices have
    LlamaForCausalLM(LlamaConfig(vocab_size=padded, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=1, head_dim=64, tie_word_embeddings=False)).save_pretrained(
        tmp_path / "untied")
    tokenizer.save_pretrained(tmp_path / "untied")
    pieces = tokenizer(REFUSAL_COMPLETION, add_special_tokens=False)["input_ids"]
    old = AutoModelForCausalLM.from_pretrained(tmp_path / "untied")
    model = AutoModelForCausalLM.from_pretrained(add_refusal_token(tmp_path / "untied", tmp_path / "out"))
    new_id = len(tokenizer)
    assert model.get_input_embeddings().num_embeddings == padded
    for get in (lambda m: m.get_input_embeddings().weight, lambda m: m.get_output_embeddings().weight):
        assert torch.allclose(get(model)[new_id], get(old)[pieces].mean(0))


@pytest.mark.parametrize(("cls", "data", "key"), [
    (SaterDPOConfig, {"beta": 0}, "beta"),
    (SaterDPOConfig, {"sft_weight": -1}, "sft_weight"),
    (SaterDPOConfig, {"steps": 0}, "steps"),
    (SaterDPOConfig, {"steps": 5, "warmup_steps": 5}, "warmup_steps"),
    (SaterRefusalConfig, {"tau": 0}, "tau"),
    (SaterRefusalConfig, {"max_length": 4}, "max_length"),
    (SaterRefusalConfig, {"learning_rate": 2.0}, "learning_rate"),
])
def test_bad_values_fail_at_load_naming_the_key(cls: type, data: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"sater\.{key}: must"):
        from_dict(cls, data, source="p.yaml", where="sater")


def test_fields_carry_help_text() -> None:
    from dataclasses import fields

    for cls in (SaterDPOConfig, SaterRefusalConfig):
        assert all(f.metadata.get("help") for f in fields(cls))
