"""Router targets (escalate.routers.targets) and the matrix-factorization router on a toy task where the
queries both models fail are the SLM's failures that escalating cannot fix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from escalate.routers import targets
from escalate.routers.base import RouterInputs
from escalate.routers.registry import make_router
from tests.test_pregen_routers import TOPICS_EASY, auroc, scoring_inputs

TOPICS_LOST = ["the halting problem for a given program", "an unsolved conjecture about primes"]
TOPICS_GAIN = ["integrals of trigonometric functions", "eigenvalues of a symmetric matrix"]


def three_kinds(n: int, seed: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Easy (both right), gain (only the LLM right) and lost (both wrong) questions, a third each."""
    rng = np.random.default_rng(seed)
    texts, slm, llm = [], [], []
    for i in range(n):
        kind = i % 3
        topic = rng.choice([TOPICS_EASY, TOPICS_GAIN, TOPICS_LOST][kind])
        texts.append(f"Question {rng.integers(1000)}: compute {topic} for case {rng.integers(100)}.")
        slm.append(kind == 0)
        llm.append(kind != 2)
    return texts, np.array(slm), np.array(llm)


def with_llm(texts: list[str], slm: np.ndarray, llm: np.ndarray | None) -> RouterInputs:
    ids = [f"q{i}" for i in range(len(texts))]
    questions = pd.DataFrame({"id": ids, "question": texts})
    llm_samples = None if llm is None else pd.DataFrame({"id": ids[::-1], "sample_idx": 0, "correct": llm[::-1]})
    return RouterInputs(questions, pd.DataFrame({"id": ids, "sample_idx": 0, "correct": slm}), llm_samples)


def test_llm_correct_is_in_question_order_and_none_without_llm_samples() -> None:
    inputs = with_llm(["a", "b", "c"], np.array([True, False, False]), np.array([True, True, False]))
    assert inputs.llm_correct().tolist() == [True, True, False]
    assert with_llm(["a"], np.array([True]), None).llm_correct() is None
    partial = RouterInputs(inputs.questions, inputs.slm_samples, inputs.llm_samples.iloc[:2])
    with pytest.raises(ValueError, match="lack questions"):
        partial.llm_correct()


def test_accuracy_area_is_apgr_ranking_and_averages_ties() -> None:
    slm, llm = np.array([True, False, False, True]), np.array([True, True, False, True])
    oracle = targets.accuracy_area(np.array([1.0, 0.0, 0.5, 1.0]), slm, llm)
    worst = targets.accuracy_area(np.array([0.0, 1.0, 0.5, 0.0]), slm, llm)
    tied = targets.accuracy_area(np.zeros(4), slm, llm)
    assert oracle > tied > worst
    assert tied == pytest.approx((0.5 + 0.75) / 2)  # random order: the straight line from SLM-only to LLM-only


def test_combine_keeps_high_and_escalates_what_gains() -> None:
    p = {"slm": np.array([0.9, 0.1, 0.1]), "llm": np.array([0.9, 0.9, 0.1]), "gain": np.array([0.0, 0.8, 0.1])}
    for target in targets.TARGETS:
        score = targets.combine(target, p)
        assert score[1] == score.min(), target  # the one query escalating helps escalates first
    both = targets.combine("both", p)
    assert both[2] > both[1] and np.all((both >= 0) & (both <= 1))
    with pytest.raises(ValueError, match="needs the LLM's correctness"):
        targets.labels(np.array([True]), None, "gain")
    with pytest.raises(ValueError, match="unknown router target"):
        make_router("embedding_lr", target="llm")


@pytest.mark.parametrize("target", ["gain", "both", "auto"])
def test_a_gain_target_keeps_what_both_models_fail_which_slm_correct_escalates(target: str) -> None:
    texts, slm, llm = three_kinds(90, seed=0)
    test_texts, test_slm, test_llm = three_kinds(30, seed=1)
    plain = make_router("embedding_lr").fit(with_llm(texts, slm, llm)).score(scoring_inputs(test_texts))
    router = make_router("embedding_lr", target=target).fit(with_llm(texts, slm, llm))
    scores = router.score(scoring_inputs(test_texts))
    gain, lost = test_llm & ~test_slm, ~test_llm
    assert plain[lost].mean() < 0.5  # P(SLM right) escalates the lost questions too
    assert scores[gain].max() < scores[lost].min()  # a gain target keeps them: escalating buys nothing
    assert auroc(-scores, gain) > 0.95
    assert router.chosen in targets.TARGETS and router.is_probability == (router.chosen == "slm_correct")
    if target == "auto":
        assert router.chosen != "slm_correct" and set(router.target_areas) == set(targets.TARGETS)


def test_auto_without_the_llm_learns_slm_correct() -> None:
    texts, slm, _ = three_kinds(60, seed=0)
    router = make_router("embedding_knn", target="auto").fit(with_llm(texts, slm, None))
    assert router.chosen == "slm_correct" and router.is_probability
    with pytest.raises(ValueError, match="needs the LLM's correctness"):
        make_router("embedding_knn", target="gain").fit(with_llm(texts, slm, None))


def test_matrix_factorization_learns_who_wins_and_is_seeded() -> None:
    texts, slm, llm = three_kinds(120, seed=0)
    flip = np.arange(120) % 9 == 3  # some SLM wins, so both sides of the battle occur
    slm, llm = slm | flip, llm & ~flip
    test_texts, test_slm, test_llm = three_kinds(30, seed=1)
    fit = with_llm(texts, slm, llm)
    router = make_router("matrix_factorization", seed=3).fit(fit)
    scores = router.score(scoring_inputs(test_texts))
    assert router.mode == "pregen" and not router.is_probability
    gain = test_llm & ~test_slm
    assert scores[gain].mean() < scores[~gain].mean() and auroc(-scores, gain) > 0.8
    again = make_router("matrix_factorization", seed=3).fit(fit).score(scoring_inputs(test_texts))
    np.testing.assert_array_equal(again, scores)
    assert router.projection.shape == (128, 384) and router.models.shape == (2, 128)


def test_matrix_factorization_without_battles_on_one_side_is_constant() -> None:
    texts, slm, _ = three_kinds(30, seed=0)
    router = make_router("matrix_factorization").fit(with_llm(texts, slm, ~slm | True))
    assert np.all(router.score(scoring_inputs(texts[:4])) == 0.0)  # the LLM wins every battle
