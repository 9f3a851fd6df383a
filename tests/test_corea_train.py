"""COREA's warm-up and GRPO run a few real steps on a tiny Llama and change its weights; configs reject bad values."""

from __future__ import annotations

import math
from dataclasses import fields, replace
from pathlib import Path

import pandas as pd
import pytest

from escalate.config import ConfigError, from_dict, load_profile
from escalate.corea.config import CoreaConfig, CoreaGRPOConfig, CoreaWarmupConfig
from escalate.corea.grpo import grpo_dataset, train_grpo
from escalate.corea.warmup import train_warmup, warmup_targets
from tests.checkpoints import weights_changed

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = pd.DataFrame({
    "id": [f"q{n}" for n in range(4)],
    "question": [f"Ann has {n} cups. Then buys 2. How many cups does Ann have now?" for n in range(4)],
    "answer": [str(n + 2) for n in range(4)],
    "split": "train", "choices": None,
})


def test_warmup_targets_append_the_sampled_accuracy_to_the_greedy_response() -> None:
    samples = pd.DataFrame({
        "id": ["q0"] * 4 + ["q1"] * 4 + ["q2"] * 2, "model": "slm",
        "sample_idx": [0, 1, 2, 3] * 2 + [0, 1],
        "text": [" The answer is 2.", " The answer is 3.", " The answer is 2.", " The answer is 2.",
                 " The answer is 9.", " The answer is 3.", " The answer is 1.", " The answer is 1.",
                 "  ", " The answer is 4."],
        "correct": [True, False, True, True, False, True, False, False, False, True],
    })
    table = warmup_targets(samples.iloc[::-1], QUESTIONS)  # in any row order
    assert list(table["id"]) == ["q0", "q1", "q2"]  # q3 has no samples
    # the greedy response, or the first non-blank sampled one where the greedy one is blank (q2)
    assert list(table["completion"]) == [" The answer is 2. Confidence: 0.75", " The answer is 9. Confidence: 0.25",
                                         " The answer is 4. Confidence: 0.50"]
    assert list(table["p_correct"]) == [0.75, 0.25, 0.5]
    assert warmup_targets(samples.assign(text=" "), QUESTIONS).empty
    assert table["prompt"].iloc[0] == f"Question: {QUESTIONS['question'][0]}\nAnswer:"
    with pytest.raises(ValueError, match="one model"):
        warmup_targets(samples.assign(model=["slm", "llm"] * 5), QUESTIONS)


def test_grpo_dataset_holds_what_the_rewards_read() -> None:
    mixed = pd.concat([QUESTIONS.head(1), pd.DataFrame({
        "id": ["c0"], "question": ["Which is even?"], "answer": ["B"], "split": "train", "choices": ['["3", "4"]']})])
    data = grpo_dataset(mixed, "<s>")
    assert data["prompt"] == [f"<s>Question: {QUESTIONS['question'][0]}\nAnswer:",
                              "<s>Question: Which is even?\nA. 3\nB. 4\nAnswer:"]
    assert data["answer"] == ["2", "B"] and data["kind"] == ["numeric", "choice"]


def test_warmup_trains_real_steps_and_changes_the_weights(base_model: Path, tmp_path: Path) -> None:
    table = pd.DataFrame({"id": QUESTIONS["id"], "prompt": [f"Question: {q}\nAnswer:" for q in QUESTIONS["question"]],
                          "completion": [f" The answer is {n + 2}. Confidence: 0.{n}0" for n in range(4)],
                          "p_correct": [0.0, 0.1, 0.2, 0.3]})
    summary = train_warmup(base_model, table, CoreaWarmupConfig(steps=3, batch_size=2, max_length=96), tmp_path / "w")
    assert summary["steps"] == 3 and all(math.isfinite(x) for x in summary["losses"])
    assert weights_changed(base_model, tmp_path / "w")


@pytest.mark.parametrize("calibrated", [True, False])
def test_grpo_trains_real_steps_on_the_smoke_config_and_changes_the_weights(
        base_model: Path, tmp_path: Path, calibrated: bool) -> None:
    smoke = load_profile("smoke", root=ROOT).corea.grpo
    cfg = replace(smoke, calibration=calibrated)
    summary = train_grpo(base_model, QUESTIONS, cfg, tmp_path / "grpo")
    assert summary["steps"] == smoke.steps and len(summary["losses"]) == smoke.steps
    assert weights_changed(base_model, tmp_path / "grpo")
    names = {"reward", "correctness", "format_ok"} | ({"calibration"} if calibrated else set())
    assert set(summary["rewards"]) == names
    assert all(len(v) == smoke.steps for v in summary["rewards"].values())
    # a random model never writes the format, so no completion earns the format or calibration reward
    assert summary["rewards"]["format_ok"] == [0.0] * smoke.steps


@pytest.mark.parametrize(("cls", "data", "key"), [
    (CoreaGRPOConfig, {"num_generations": 1}, "num_generations"),
    (CoreaGRPOConfig, {"batch_size": 6, "num_generations": 4}, "batch_size"),
    (CoreaGRPOConfig, {"temperature": 0}, "temperature"),
    (CoreaGRPOConfig, {"beta": -1}, "beta"),
    (CoreaGRPOConfig, {"calibration_weight": 0}, "calibration_weight"),
    (CoreaGRPOConfig, {"scale_rewards": "std"}, "scale_rewards"),
    (CoreaWarmupConfig, {"steps": 0}, "steps"),
    (CoreaConfig, {"k_train": 1}, "k_train"),
    (CoreaConfig, {"ood_min_difficulty": 0}, "ood_min_difficulty"),
])
def test_bad_values_fail_at_load_naming_the_key(cls: type, data: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"corea\.{key}: must"):
        from_dict(cls, data, source="p.yaml", where="corea")


def test_fields_carry_help_text() -> None:
    for cls in (CoreaConfig, CoreaWarmupConfig, CoreaGRPOConfig):
        assert all(f.metadata.get("help") for f in fields(cls)), cls.__name__
