"""The P(IK) probe and the joint P(IK)/P(T) rule on a real (random) Llama checkpoint and a toy task.

The SLM "fails" exactly the questions about pens, so the word is in its prompt's hidden states and a
probe that learned anything ranks those questions lower. For the joint rule, P(T) also catches a
second kind of mistake the prompt cannot show, so the rule must beat either signal alone.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from escalate.config import ArchConfig, ArithConfig
from escalate.evaluation.cached import pregen_routers
from escalate.evaluation.cost import TokenPriceCost
from escalate.evaluation.run import EvalSettings, build_router, evaluate
from escalate.models import zoo
from escalate.routers.base import RouterInputs
from escalate.routers.joint_pik_pt import RATIOS, joint_score
from escalate.routers.pik_probe import POOLINGS, HiddenStates
from escalate.routers.registry import ROUTERS, make_router
from escalate.routers.state import load_router, save_router


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("slm")
    pairs = zoo.corpus(ArithConfig(max_operand=9), 100, 1, set())
    tok = zoo.train_tokenizer((p + c for p, c in pairs), 300)
    zoo.build_model(ArchConfig(64, 2, 1, 64, 64), tok, 0).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def toy(n: int, seed: int, split: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Questions and greedy SLM samples: wrong on every pens question, and on every fifth cups question,
    where only its answer probability (P(T)) is low; P(T) is high on every pens question."""
    rng = np.random.default_rng(seed)
    rows, samples = [], []
    for i in range(n):
        pens = i % 3 == 0
        name = ["Ann", "Ben", "Eva", "Tom"][rng.integers(4)]
        a, b = rng.integers(1, 9, 2)
        qid = f"{split}-{i}"
        rows.append({"id": qid, "task": "toy", "question": f"{name} has {a} {'pens' if pens else 'cups'}. "
                     f"Then gets {b} more. How many does {name} have now?", "answer": str(a + b),
                     "split": split, "difficulty": 1 + int(pens), "choices": None})
        unsure = not pens and i % 5 == 1
        correct = not pens and not unsure
        p_answer = rng.uniform(0.05, 0.3) if unsure else rng.uniform(0.6, 0.95)
        samples.append({"id": qid, "model": "slm", "split": split, "sample_idx": 0, "text": "x",
                        "parsed_answer": str(a + b if correct else a), "correct": correct,
                        "answer_logprob": math.log(p_answer), "token_logprobs": [-0.1], "mean_entropy": 0.1,
                        "n_prompt_tokens": 20, "n_output_tokens": 5, "latency_s": 0.01})
    return pd.DataFrame(rows), pd.DataFrame(samples)


def inputs(n: int, seed: int, split: str) -> tuple[RouterInputs, np.ndarray]:
    questions, samples = toy(n, seed, split)
    return RouterInputs(questions, samples), samples["correct"].to_numpy(bool)


def test_probe_learns_what_the_slm_fails_from_its_hidden_states(checkpoint: str) -> None:
    calib, _ = inputs(90, 0, "calib")
    test, correct = inputs(45, 1, "test")
    probe = make_router("pik_probe", model_dir=checkpoint).fit(calib)
    assert probe.selection is not None
    assert probe.selection.pooling in POOLINGS and 0 <= probe.selection.layer <= 2
    scores = probe.score(test)
    assert scores.shape == (45,) and ((0 <= scores) & (scores <= 1)).all()
    pens = test.questions["question"].str.contains("pens").to_numpy()
    assert scores[pens].max() < scores[~pens].min()  # every pens question ranks below every cups one
    assert roc_auc_score(correct, scores) > 0.75  # the unsure-cups mistakes are invisible to it


def test_hidden_states_do_not_depend_on_the_batch(checkpoint: str) -> None:
    short, long = "Question: Ann has 2 cups.\nAnswer:", "Question: Ben has 3 pens. Then gets 4 more. How many?\nAnswer:"
    alone = HiddenStates(checkpoint).pooled([short])
    batched = HiddenStates(checkpoint).pooled([long, short])  # the short prompt is left-padded here
    np.testing.assert_allclose(batched[1], alone[0], atol=1e-5)
    assert alone.shape == (1, len(POOLINGS), 3, 64)


def test_a_saved_probe_scores_alike_without_carrying_weights(checkpoint: str, tmp_path: Path) -> None:
    calib, _ = inputs(60, 2, "calib")
    test, _ = inputs(10, 3, "test")
    probe = make_router("pik_probe", model_dir=checkpoint).fit(calib)
    saved = save_router(probe, tmp_path / "probe")
    assert sum(f.stat().st_size for f in saved.iterdir()) < 100_000  # the checkpoint's path and a regression
    np.testing.assert_allclose(load_router(saved).score(test), probe.score(test))


def test_one_class_calib_gives_its_rate(checkpoint: str) -> None:
    calib, _ = inputs(12, 4, "calib")
    calib.slm_samples["correct"] = True
    probe = make_router("pik_probe", model_dir=checkpoint).fit(calib)
    assert (probe.score(calib) == 1.0).all() and probe.selection is None


def test_joint_rule_catches_both_kinds_of_mistake(checkpoint: str) -> None:
    calib, _ = inputs(120, 5, "calib")
    test, correct = inputs(60, 6, "test")
    joint = make_router("joint_pik_pt", model_dir=checkpoint).fit(calib)
    assert joint.ratio in RATIOS
    pik, pt = joint.probe.score(test), joint.p_true.score(test)
    scores = joint.score(test)
    auc = {name: roc_auc_score(correct, s) for name, s in (("joint", scores), ("pik", pik), ("pt", pt))}
    assert auc["joint"] > max(auc["pik"], auc["pt"]) + 0.05, auc
    # the one-threshold form is the two-threshold rule: score < τ  ⇔  P(T) < τ or P(IK) < r·τ
    for tau in (0.2, 0.5, 0.8):
        np.testing.assert_array_equal(scores < tau, (pt < tau) | (pik < joint.ratio * tau))


def test_joint_score_is_the_minimum_of_rescaled_signals() -> None:
    np.testing.assert_allclose(joint_score(np.array([0.2, 0.9]), np.array([0.5, 0.3]), 0.5), [0.4, 0.3])


def test_probes_need_the_checkpoint_and_are_not_offered_for_cached_tables() -> None:
    assert ROUTERS["pik_probe"].mode == "pregen" and ROUTERS["joint_pik_pt"].mode == "cascade"
    with pytest.raises(ValueError, match="'pik_probe' needs model_dir"):
        build_router("pik_probe", seed=0)
    assert "pik_probe" not in pregen_routers() and "prompt_length" in pregen_routers()


def test_evaluate_fits_the_probes_with_the_checkpoint(checkpoint: str, tmp_path: Path) -> None:
    cq, cs = toy(60, 7, "calib")
    tq, ts = toy(30, 8, "test")
    questions, slm = pd.concat([cq, tq], ignore_index=True), pd.concat([cs, ts], ignore_index=True)
    llm = slm.assign(model="llm", correct=True, parsed_answer="0", n_output_tokens=10)
    samples = pd.concat([slm, llm], ignore_index=True)
    timings = samples[["model", "n_prompt_tokens", "n_output_tokens", "latency_s"]]
    cost = TokenPriceCost({"slm": (0.05, 0.05), "llm": (1.0, 1.0)})
    settings = EvalSettings(split="test", delta=0.02, n_points=101, seed=0, profile="toy")
    metrics = evaluate(questions, samples, cost, settings, tmp_path, timings, routers=["pik_probe", "joint_pik_pt"],
                       model_dir=checkpoint)
    rows = {r["strategy"]: r for r in metrics["summary"]}
    assert rows["pik_probe"]["auroc"] > 0.75 and rows["joint_pik_pt"]["auroc"] > rows["pik_probe"]["auroc"]
    assert (tmp_path / "routers" / "pik_probe" / "state.json").is_file()
