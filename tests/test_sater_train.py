"""SATER's two training stages run a few real steps on a tiny Llama and change its weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from escalate.config import ConfigError, from_dict
from escalate.train.preferences import REFUSAL_COMPLETION
from escalate.train.sater_dpo import SaterDPOConfig, train_dpo
from escalate.train.sater_refusal import SaterRefusalConfig, train_refusal
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


def test_refusal_sft_trains_real_steps_and_changes_the_weights(base_model: Path, tmp_path: Path) -> None:
    table = pd.DataFrame({
        "id": [f"q{i}" for i in range(4)], "prompt": PROMPTS,
        "completion": [REFUSAL_COMPLETION, " The answer is 3.", REFUSAL_COMPLETION, " The answer is 5."],
        "p_correct": [0.0, 1.0, 0.25, 0.75],
    })
    cfg = SaterRefusalConfig(learning_rate=1e-3, steps=3, batch_size=2, max_length=128)
    summary = train_refusal(base_model, table, cfg, tmp_path / "sft")
    assert summary["steps"] == 3 and all(math.isfinite(x) for x in summary["losses"])
    assert weights_changed(base_model, tmp_path / "sft")


@pytest.mark.parametrize(("cls", "data", "key"), [
    (SaterDPOConfig, {"beta": 0}, "beta"),
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
