"""Each pre-generation router on a toy task whose answer is known.

The SLM fails exactly the questions about a keyword (or, for prompt length, the long questions),
so a router that learned anything scores those lower. Scoring gets no SLM samples at all: a
pre-generation router must decide from the question text alone.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from escalate.routers.base import RouterInputs
from escalate.routers.embedding import get_encoder
from escalate.routers.registry import ROUTERS, make_router

EMBEDDING_ROUTERS = ("embedding_lr", "embedding_knn", "embedding_mlp", "embedding_features")
TOPICS_EASY = ["apples in a basket", "pages in a book", "cars in a parking lot", "birds on a wire",
               "coins in a jar", "chairs in a room", "pencils in a box", "eggs in a carton"]
TOPICS_HARD = ["integrals of trigonometric functions", "eigenvalues of a symmetric matrix",
               "the derivative of a logarithm", "limits of a convergent series"]


def toy(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Counting questions the SLM gets right; calculus questions it gets wrong."""
    rng = np.random.default_rng(seed)
    texts, correct = [], []
    for i in range(n):
        hard = i % 3 == 0
        topic = rng.choice(TOPICS_HARD if hard else TOPICS_EASY)
        texts.append(f"Question {rng.integers(1000)}: compute {topic} for case {rng.integers(100)}.")
        correct.append(not hard)
    return texts, np.array(correct)


def calib_inputs(texts: list[str], correct: np.ndarray) -> RouterInputs:
    ids = [f"q{i}" for i in range(len(texts))]
    samples = pd.DataFrame({"id": ids[::-1], "sample_idx": 0, "correct": correct[::-1]})  # out of order on purpose
    return RouterInputs(pd.DataFrame({"id": ids, "question": texts}), samples)


def scoring_inputs(texts: list[str]) -> RouterInputs:
    empty = pd.DataFrame({"id": [], "sample_idx": [], "correct": []})
    return RouterInputs(pd.DataFrame({"id": [f"t{i}" for i in range(len(texts))], "question": texts}), empty)


def auroc(scores: np.ndarray, correct: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(correct, scores))


@pytest.mark.parametrize("name", EMBEDDING_ROUTERS)
def test_embedding_routers_rank_the_failing_topic_lower(name: str) -> None:
    texts, correct = toy(90, seed=0)
    test_texts, test_correct = toy(30, seed=1)
    router = make_router(name).fit(calib_inputs(texts, correct))
    scores = router.score(scoring_inputs(test_texts))
    assert scores.shape == (30,)
    assert ((scores >= 0) & (scores <= 1)).all()
    assert auroc(scores, test_correct) > 0.9
    assert scores[~test_correct].mean() < scores[test_correct].mean()


def test_prompt_length_learns_that_long_prompts_fail_and_the_reverse() -> None:
    short = [f"Add {i} and {i + 1}." for i in range(20)]
    long = [f"A train leaves at {i} o'clock travelling at {i + 40} km/h while another one waits; "
            f"how far apart are they after {i % 5 + 2} hours if the second leaves an hour later?" for i in range(20)]
    correct = np.array([True] * 20 + [False] * 20)
    router = make_router("prompt_length").fit(calib_inputs(short + long, correct))
    s_short, s_long = router.score(scoring_inputs(["Add 3 and 9.", long[0] + " Explain."]))
    assert s_short > 0.8 > 0.2 > s_long
    flipped = make_router("prompt_length").fit(calib_inputs(short + long, ~correct))
    f_short, f_long = flipped.score(scoring_inputs(["Add 3 and 9.", long[0] + " Explain."]))
    assert f_long > f_short


@pytest.mark.parametrize("name", [*EMBEDDING_ROUTERS, "prompt_length"])
def test_pregen_routers_declare_themselves_and_handle_one_class_calib(name: str) -> None:
    assert ROUTERS[name].mode == "pregen" and ROUTERS[name].is_probability
    texts, _ = toy(12, seed=2)
    router = make_router(name).fit(calib_inputs(texts, np.ones(12, bool)))
    assert (router.score(scoring_inputs(texts[:3])) == 1.0).all()


def test_unfitted_router_says_it_needs_fitting() -> None:
    with pytest.raises(RuntimeError, match="must be fitted"):
        make_router("prompt_length").score(scoring_inputs(["a"]))


def test_encoder_returns_unit_vectors_and_caches_each_text_once() -> None:
    encoder = get_encoder()
    vectors = encoder.encode(["two plus two", "a matrix eigenvalue", "two plus two"])
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vectors[0], vectors[2])
    assert get_encoder() is encoder and len(encoder._memo) >= 2  # the two distinct texts are held


def test_difficulty_features_count_the_work_a_question_asks_for() -> None:
    from escalate.routers.embedding_features import N_FEATURES, difficulty_features

    one_step = difficulty_features("Ann has 3 cups. How many cups does she have?")
    many = difficulty_features("Ann buys 12 pens at $1.50 each and 3 books, 20% off. "
                               "She pays twice a week for 4 weeks. How much does she spend in 2 months?")
    assert len(one_step) == len(many) == N_FEATURES
    assert many[1] > one_step[1] and many[2] > one_step[2] and many[3] > one_step[3]  # numbers, distinct, sentences
    assert many[0] > one_step[0] and many[4] > one_step[4]  # length and the largest number


def test_embedding_features_learns_the_number_of_steps_the_embedding_barely_shows() -> None:
    """Same topic, same words: the SLM fails the questions with more numbers in them."""
    rng = np.random.default_rng(0)

    def questions(n: int) -> tuple[list[str], np.ndarray]:
        texts, correct = [], []
        for i in range(n):
            steps = 1 + i % 4
            parts = [f"then gets {rng.integers(2, 9)} more" for _ in range(steps)]
            texts.append(f"Ann has {rng.integers(2, 9)} apples, " + ", ".join(parts) + ". How many apples now?")
            correct.append(steps <= 2)
        return texts, np.array(correct)

    texts, correct = questions(120)
    test_texts, test_correct = questions(40)
    router = make_router("embedding_features").fit(calib_inputs(texts, correct))
    assert auroc(router.score(scoring_inputs(test_texts)), test_correct) > 0.95
