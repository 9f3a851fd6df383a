"""Every registered router scores hand-built SLM samples whose right ranking is known.

Samples are deliberately listed out of question order: a router must answer in `questions` order.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from escalate.evaluation.run import required_args
from escalate.routers.base import Router, RouterInputs, RowInputs, majority
from escalate.routers.registry import ROUTERS, make_router

LN = math.log


def sample(qid: str, idx: int, answer: str | None, correct: bool, answer_lp: float | None = None,
           entropy: float = 1.0, token_lps: list[float] | None = None) -> dict:
    """One SLM sample; its text states the answer probability as its confidence (COREA's format)."""
    stated = math.exp(answer_lp) if answer_lp is not None and not math.isnan(answer_lp) else 0.0
    return {"id": qid, "model": "slm", "split": "test", "sample_idx": idx, "parsed_answer": answer,
            "text": f"The answer is {answer}. Confidence: {stated:.2f}",
            "correct": correct, "answer_logprob": answer_lp, "mean_entropy": entropy,
            "token_logprobs": token_lps if token_lps is not None else [-0.1, -0.2]}


def plain(values: pd.Series) -> list:
    """Values with pandas' missing markers (None or NaN, as the column happens to hold) as None."""
    return [None if pd.isna(v) else v for v in values]


def inputs(rows: list[dict], ids: list[str]) -> RouterInputs:
    questions = pd.DataFrame({"id": ids, "question": [f"question {i}" for i in ids], "split": "test"})
    return RouterInputs(questions, pd.DataFrame(rows))


@pytest.fixture()
def sure_vs_unsure() -> RouterInputs:
    """q_sure: the SLM is confident by every signal and right; q_unsure: unconfident by every signal, wrong."""
    rows = [
        sample("q_unsure", 2, "9", False, LN(0.2), 2.5, [LN(0.3), LN(0.2)]),
        sample("q_sure", 1, "4", True, LN(0.95), 0.05, [LN(0.97), LN(0.99)]),
        sample("q_unsure", 0, "7", False, LN(0.15), 2.0, [LN(0.4), LN(0.1)]),
        sample("q_sure", 0, "4", True, LN(0.9), 0.1, [LN(0.95), LN(0.98)]),
        sample("q_unsure", 1, "8", False, LN(0.1), 2.2, [LN(0.2), LN(0.3)]),
        sample("q_sure", 2, "4", True, LN(0.92), 0.08, [LN(0.96), LN(0.9)]),
    ]
    return inputs(rows, ["q_unsure", "q_sure"])


# Routers that read the SLM's hidden states need a checkpoint: tests/test_pik_probe.py covers them.
SELF_CONTAINED = [n for n in ROUTERS if not required_args(n)]


@pytest.mark.parametrize("name", [n for n in SELF_CONTAINED if ROUTERS[n].mode == "cascade"])
def test_every_signal_router_ranks_the_confident_answer_higher(name: str, sure_vs_unsure: RouterInputs) -> None:
    router = make_router(name).fit(sure_vs_unsure)
    unsure, sure = router.score(sure_vs_unsure)
    assert sure > unsure
    # with a threshold between the two, only the unsure question escalates
    assert list(router.escalate(sure_vs_unsure, (sure + unsure) / 2)) == [True, False]


@pytest.mark.parametrize("name", list(ROUTERS))
def test_every_router_declares_itself(name: str) -> None:
    router = make_router(name, **dict.fromkeys(required_args(name), "unused"))
    assert isinstance(router, Router)
    assert router.name == name
    assert router.mode in ("cascade", "pregen")


def test_p_true_is_the_answer_probability_and_a_missing_answer_scores_zero() -> None:
    rows = [
        sample("a", 0, "5", True, LN(0.9)),
        sample("b", 0, "6", False, LN(0.2)),
        sample("c", 0, None, False, None),
        sample("d", 0, "1", True, float("nan")),
    ]
    router = make_router("p_true_token")
    scores = router.score(inputs(rows, ["a", "b", "c", "d"]))
    np.testing.assert_allclose(scores, [0.9, 0.2, 0.0, 0.0])
    assert router.is_probability and router.mode == "cascade" and not router.uses_all_samples


def test_p_true_reads_only_the_greedy_sample() -> None:
    rows = [sample("a", 0, "5", True, LN(0.3)), sample("a", 1, "5", True, LN(0.99))]
    assert make_router("p_true_token").score(inputs(rows, ["a"]))[0] == pytest.approx(0.3)


def test_logprob_routers_mean_and_min() -> None:
    rows = [
        sample("a", 0, "5", True, token_lps=[LN(0.9), LN(0.1)]),
        sample("b", 0, "6", True, token_lps=[LN(0.5), LN(0.5)]),
        sample("c", 0, None, False, token_lps=[]),
    ]
    x = inputs(rows, ["a", "b", "c"])
    np.testing.assert_allclose(make_router("mean_logprob").score(x), [0.3, 0.5, 0.0])  # geometric mean
    np.testing.assert_allclose(make_router("min_logprob").score(x), [0.1, 0.5, 0.0])


def test_entropy_router_negates_mean_entropy() -> None:
    rows = [sample("a", 0, "5", True, entropy=0.3), sample("b", 0, "6", False, entropy=1.7)]
    router = make_router("entropy")
    np.testing.assert_allclose(router.score(inputs(rows, ["a", "b"])), [-0.3, -1.7])
    assert not router.is_probability


@pytest.fixture()
def votes() -> RouterInputs:
    rows = [
        # a: 3 of 4 samples say 4, which is right
        sample("a", 0, "4", True), sample("a", 1, "4", True), sample("a", 2, "5", False), sample("a", 3, "4", True),
        # b: greedy 7 is right, but the majority says 8 (wrong); one refusal counts against the share
        sample("b", 0, "7", True), sample("b", 1, "8", False), sample("b", 2, None, False), sample("b", 3, "8", False),
        # c: nothing parsed at all
        sample("c", 0, None, False), sample("c", 1, None, False), sample("c", 2, None, False), sample("c", 3, None, False),
    ]
    return inputs(rows[::-1], ["b", "c", "a"])


def test_self_consistency_share_answer_and_correctness(votes: RouterInputs) -> None:
    router = make_router("self_consistency")
    np.testing.assert_allclose(router.score(votes), [0.5, 0.0, 0.75])
    answers = router.slm_answers(votes)
    assert list(answers["id"]) == ["b", "c", "a"]
    assert plain(answers["answer"]) == ["8", None, "4"]
    assert list(answers["correct"]) == [False, False, True]
    assert router.uses_all_samples and router.is_probability


def test_greedy_strategies_answer_with_sample_zero(votes: RouterInputs) -> None:
    answers = make_router("p_true_token").slm_answers(votes)
    assert list(answers["id"]) == ["b", "c", "a"]
    assert plain(answers["answer"]) == ["7", None, "4"]
    assert list(answers["correct"]) == [True, False, True]


def test_majority_ignores_blanks_but_counts_them() -> None:
    assert majority(["x", None, float("nan"), "x"]) == ("x", 0.5)
    assert majority(["y", "x", "x", "y"]) == ("y", 0.5)  # a tie goes to the first seen (the greedy)
    assert majority([None, None]) == (None, 0.0)


def test_random_router_is_reproducible_by_seed_and_pregen(votes: RouterInputs) -> None:
    a, b, c = make_router("random", seed=3), make_router("random", seed=3), make_router("random", seed=4)
    assert a.mode == "pregen" and not a.is_probability
    sa = a.score(votes)
    np.testing.assert_array_equal(sa, b.score(votes))
    np.testing.assert_array_equal(sa, a.score(votes))
    assert not np.array_equal(sa, c.score(votes))
    assert sa.shape == (3,) and ((0 <= sa) & (sa < 1)).all()


def test_random_router_escalates_about_the_threshold_fraction() -> None:
    rows = [sample(f"q{i}", 0, "1", True) for i in range(2000)]
    x = inputs(rows, [f"q{i}" for i in range(2000)])
    assert make_router("random", seed=0).escalate(x, 0.3).mean() == pytest.approx(0.3, abs=0.04)


def test_make_router_unknown_name_lists_known() -> None:
    with pytest.raises(KeyError) as info:
        make_router("oracle")
    msg = str(info.value)
    assert "unknown router 'oracle'" in msg
    for name in ROUTERS:
        assert name in msg


def test_registry_names_match_classes() -> None:
    assert set(ROUTERS) == {"p_true_token", "mean_logprob", "min_logprob", "entropy", "self_consistency", "random",
                            "sater_refusal", "sater_vote", "sater_pregen", "prompt_length", "embedding_lr", "embedding_knn",
                            "embedding_mlp", "embedding_features", "corea_confidence", "pik_probe", "joint_pik_pt",
                            "matrix_factorization"}
    for name, cls in ROUTERS.items():
        assert cls.name == name


class TablesForbidden(RowInputs):
    """Online inputs whose DataFrames may not be built: a cheap router must score on the rows alone."""

    @property
    def questions(self) -> pd.DataFrame:  # type: ignore[override]
        raise AssertionError("a cheap router built the questions table")

    @property
    def slm_samples(self) -> pd.DataFrame:  # type: ignore[override]
        raise AssertionError("a cheap router built the samples table")


def as_rows(x: RouterInputs, cls: type[RowInputs] = RowInputs) -> RowInputs:
    """The same inputs as the online cascade holds them: plain rows."""
    return cls(x.questions.assign(choices=None).to_dict("records"), x.slm_samples.to_dict("records"))


CHEAP = [n for n in SELF_CONTAINED if getattr(ROUTERS[n], "cheap_to_score", False)]


@pytest.mark.parametrize("name", SELF_CONTAINED)
@pytest.mark.parametrize("fixture", ["sure_vs_unsure", "votes"])
def test_rows_and_tables_score_and_answer_alike(name: str, fixture: str, request: pytest.FixtureRequest) -> None:
    """The gateway scores one request on rows, evaluation on tables: one rule, the same scores and answers."""
    x = request.getfixturevalue(fixture)
    router = make_router(name)
    if router.mode == "pregen" and name != "random":
        router.fit(x)
    np.testing.assert_array_equal(router.score(as_rows(x)), router.score(x))
    def answers(rows: list[dict]) -> list[dict]:  # a missing answer is None in rows, None or NaN in a table
        return [{**row, "answer": plain([row["answer"]])[0]} for row in rows]

    assert answers(router.slm_answer_rows(as_rows(x))) == answers(router.slm_answers(x).to_dict("records"))


@pytest.mark.parametrize("name", CHEAP)
def test_a_cheap_router_scores_without_building_a_table(name: str, sure_vs_unsure: RouterInputs) -> None:
    router = make_router(name)
    rows = as_rows(sure_vs_unsure, TablesForbidden)
    assert len(router.score(rows)) == 2 and len(router.slm_answer_rows(rows)) == 2


def test_the_cheap_routers_are_the_ones_that_read_only_samples() -> None:
    assert set(CHEAP) >= {"mean_logprob", "min_logprob", "entropy", "p_true_token", "self_consistency", "sater_vote",
                          "sater_refusal", "corea_confidence"}
