"""COREA's warm-up and GRPO run real steps on a tiny Llama and move its stated confidence the way each means to:
the warm-up towards each question's p̂, the calibration reward down where every answer is wrong (against RLVR's
run from the same start); configs reject bad values."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from escalate.config import ConfigError, from_dict, load_profile
from escalate.corea.confidence import parse_confidence, with_confidence
from escalate.corea.config import CoreaConfig, CoreaGRPOConfig, CoreaWarmupConfig
from escalate.corea.grpo import grpo_dataset, train_grpo
from escalate.corea.warmup import train_warmup, warmup_targets
from escalate.prompts import format_prompt
from tests.checkpoints import weights_changed
from tests.likelihood import completion_logprob, sample

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = pd.DataFrame({
    "id": [f"q{n}" for n in range(4)],
    "question": [f"Ann has {n} cups. Then buys 2. How many cups does Ann have now?" for n in range(4)],
    "answer": [str(n + 2) for n in range(4)],
    "split": "train", "choices": None,
})
TRAINED, HELD_OUT = [1, 3, 5, 7], [2, 4, 6, 8]
GRID = [c / 10 for c in range(11)]
P_HATS = [0.6, 0.7, 0.8, 0.9, 0.1, 0.2, 0.3, 0.4]  # the warm-up's targets: easy questions, then hard ones


def easy(n: int) -> str:
    return f"Ann has {n} cups. How many cups does Ann have?"


def hard(n: int) -> str:
    return f"Ann has {n} cups. Then gets 3 more. Then gives away 2. Then the pile grows 2 times. How many cups does Ann have now?"


@pytest.fixture(scope="module")
def warmed(base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The warm-up trained to a plateau on easy questions whose p̂ is 0.6-0.9 and hard ones whose p̂ is 0.1-0.4:
    the start both GRPO runs share, as in the corea stage. Within each kind the targets spread, so sampled
    confidences differ within a GRPO group and the rewards have something to compare."""
    table = pd.DataFrame({
        "id": [f"w{i}" for i in range(8)],
        "prompt": [format_prompt(easy(n)) for n in TRAINED] + [format_prompt(hard(n)) for n in TRAINED],
        "completion": [with_confidence(f" The answer is {n}.", p) for n, p in zip(TRAINED * 2, P_HATS)],
        "p_correct": P_HATS,
    })
    out = tmp_path_factory.mktemp("corea") / "warmup"
    train_warmup(base_model, table, CoreaWarmupConfig(steps=150, batch_size=4, max_length=128, learning_rate=1e-2), out)
    return out


def expected_confidence(model: Path, question: Callable[[int], str], ns: list[int]) -> list[float]:
    """Per question(n): the mean of the confidences 0.0, 0.1 ... 1.0 after the answer, weighted by the model's
    likelihood of each."""
    pairs = [(format_prompt(question(n)), with_confidence(f" The answer is {n}.", c)) for n in ns for c in GRID]
    logp = torch.tensor(completion_logprob(model, pairs)).view(len(ns), len(GRID))
    return (torch.softmax(logp, 1) * torch.tensor(GRID)).sum(1).tolist()


def stated(model: Path, questions: list[str]) -> tuple[float, float]:
    """The readable share of 16 sampled responses per question, and their mean stated confidence."""
    found = [parse_confidence(t) for t in sample(model, [format_prompt(q) for q in questions], 16, 32)]
    ok = [s.value for s in found if s.status == "ok"]
    return len(ok) / len(found), sum(ok) / max(len(ok), 1)


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


def test_warmup_states_the_confidence_of_each_question_s_p_hat(base_model: Path, warmed: Path) -> None:
    """Higher stated confidence where the targets' p̂ was higher: trained and held-out questions alike
    (about 0.70 on easy and 0.30 on hard ones here, from 0.50 untrained)."""
    before = expected_confidence(base_model, easy, TRAINED + HELD_OUT) + expected_confidence(base_model, hard, HELD_OUT)
    assert all(abs(b - 0.5) < 0.05 for b in before), before
    high, low = (expected_confidence(warmed, q, TRAINED + HELD_OUT) for q in (easy, hard))
    assert min(high) > 0.6 and max(low) < 0.4 and min(high) - max(low) > 0.25, (high, low)


def test_the_calibration_reward_lowers_stated_confidence_where_every_answer_is_wrong(warmed: Path,
                                                                                       tmp_path: Path) -> None:
    """No answer can be right (the gold is 99), so correctness is 0 throughout and only the calibration reward,
    1 − c², tells confidences apart: COREA's run states far less confidence than RLVR's from the same start, same
    seed (here about 0.04 against 0.57; 0.64 before GRPO), while both still write the format."""
    wrong = pd.DataFrame({"id": [f"g{n}" for n in range(1, 9)], "question": [easy(n) for n in range(1, 9)],
                          "answer": "99", "split": "train", "choices": None})
    cfg = CoreaGRPOConfig(steps=16, batch_size=16, num_generations=8, max_length=32, learning_rate=5e-4)
    runs = {}
    for calibrated in (True, False):
        summary = train_grpo(warmed, wrong, replace(cfg, calibration=calibrated), tmp_path / str(calibrated))
        assert summary["rewards"]["correctness"] == [0.0] * cfg.steps
        runs[calibrated] = stated(tmp_path / str(calibrated), [easy(n) for n in HELD_OUT])
    start = stated(warmed, [easy(n) for n in HELD_OUT])
    (corea_ok, corea), (rlvr_ok, rlvr) = runs[True], runs[False]
    assert min(corea_ok, rlvr_ok, start[0]) > 0.5, (runs, start)
    assert corea < rlvr - 0.25 and corea < start[1] - 0.25, (runs, start)


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
