"""Per-query records: each strategy pays for exactly the samples it uses, and the latency model
recovers the per-token speeds that generated the latencies."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from escalate.evaluation.cost import TokenPriceCost
from escalate.evaluation.metrics import RECORD_COLUMNS, check_records, outcomes
from escalate.evaluation.records import LatencyModel, build_records, fit_latency_model, usage
from escalate.evaluation.thresholds import REFUSED_COLUMN
from escalate.routers.base import Router, RouterInputs
from escalate.routers.registry import make_router

COST = TokenPriceCost({"slm": (1.0, 2.0), "llm": (10.0, 20.0)})
LATENCY = LatencyModel({"slm": (0.001, 0.01), "llm": (0.004, 0.05)})


def row(qid: str, model: str, idx: int, answer: str | None, correct: bool, n_prompt: int, n_output: int,
        latency: float, answer_lp: float = -0.1) -> dict:
    return {"id": qid, "model": model, "split": "test", "sample_idx": idx, "text": f"The answer is {answer}.",
            "parsed_answer": answer, "correct": correct, "n_prompt_tokens": n_prompt, "n_output_tokens": n_output,
            "token_logprobs": [-0.1, -0.5], "answer_logprob": answer_lp, "mean_entropy": 0.5, "latency_s": latency}


@pytest.fixture()
def split() -> tuple[RouterInputs, pd.DataFrame]:
    """Two questions, three SLM samples and two LLM samples each, listed out of question order.

    q1: greedy SLM right, but the other two SLM samples agree on a wrong answer (the vote is wrong).
    q2: greedy SLM wrong, the vote right.
    """
    slm = pd.DataFrame([
        row("q2", "slm", 2, "3", True, 10, 4, 0.3, -2.0),
        row("q1", "slm", 0, "5", True, 10, 5, 0.1, -0.05),
        row("q1", "slm", 1, "6", False, 10, 7, 0.2),
        row("q2", "slm", 0, "9", False, 10, 3, 0.4, -2.0),
        row("q1", "slm", 2, "6", False, 10, 9, 0.3),
        row("q2", "slm", 1, "3", True, 10, 6, 0.5),
    ])
    llm = pd.DataFrame([
        row("q2", "llm", 0, "3", True, 10, 8, 1.0),
        row("q1", "llm", 1, "5", True, 10, 100, 9.0),
        row("q1", "llm", 0, "4", False, 10, 20, 2.0),
        row("q2", "llm", 1, "3", True, 10, 100, 9.0),
    ])
    questions = pd.DataFrame({"id": ["q1", "q2"], "question": ["one", "two"], "split": "test"})
    return RouterInputs(questions, slm), llm


def test_columns_match_the_metrics_contract(split: tuple[RouterInputs, pd.DataFrame]) -> None:
    x, llm = split
    for name in ("p_true_token", "self_consistency", "random", "entropy", "min_logprob", "mean_logprob"):
        kwargs = {"seed": 0} if name == "random" else {}
        records = build_records(make_router(name, **kwargs), x, llm, COST, LATENCY)
        assert tuple(records.columns) == (*RECORD_COLUMNS, REFUSED_COLUMN)
        check_records(records, make_router(name, **kwargs).mode)  # no nulls, finite scores
        assert list(records["id"]) == ["q1", "q2"]


def test_p_true_pays_only_the_greedy_sample(split: tuple[RouterInputs, pd.DataFrame]) -> None:
    x, llm = split
    records = build_records(make_router("p_true_token"), x, llm, COST, LATENCY)
    # q1 greedy: 10 prompt * 1 + 5 output * 2 = 20; q2 greedy: 10 + 3 * 2 = 16
    assert list(records["slm_cost"]) == [20.0, 16.0]
    assert list(records["slm_latency_s"]) == pytest.approx([0.1, 0.4])
    assert list(records["slm_correct"]) == [True, False]
    np.testing.assert_allclose(records["score"], [math.exp(-0.05), math.exp(-2.0)])


def test_self_consistency_pays_all_k_samples_and_answers_by_vote(split: tuple[RouterInputs, pd.DataFrame]) -> None:
    x, llm = split
    records = build_records(make_router("self_consistency"), x, llm, COST, LATENCY)
    # q1: (10 + 10) + (10 + 14) + (10 + 18) = 72; q2: (10 + 6) + (10 + 12) + (10 + 8) = 56
    assert list(records["slm_cost"]) == [72.0, 56.0]
    assert list(records["slm_latency_s"]) == pytest.approx([0.6, 1.2])
    assert list(records["slm_correct"]) == [False, True]  # the vote, not the greedy answer
    np.testing.assert_allclose(records["score"], [2 / 3, 2 / 3])


def test_llm_side_is_always_its_greedy_sample(split: tuple[RouterInputs, pd.DataFrame]) -> None:
    x, llm = split
    for name in ("p_true_token", "self_consistency"):
        records = build_records(make_router(name), x, llm, COST, LATENCY)
        # q1 greedy LLM: 10 * 10 + 20 * 20 = 500, wrong; q2: 100 + 8 * 20 = 260, right
        assert list(records["llm_cost"]) == [500.0, 260.0]
        assert list(records["llm_correct"]) == [False, True]
        assert list(records["llm_latency_s"]) == pytest.approx([2.0, 1.0])
        assert (records["router_cost"] == 0).all()


def test_modelled_latency_follows_the_latency_model(split: tuple[RouterInputs, pd.DataFrame]) -> None:
    x, llm = split
    records = build_records(make_router("p_true_token"), x, llm, COST, LATENCY)
    assert list(records["slm_latency_model_s"]) == pytest.approx([0.001 * 10 + 0.01 * 5, 0.001 * 10 + 0.01 * 3])
    assert list(records["llm_latency_model_s"]) == pytest.approx([0.004 * 10 + 0.05 * 20, 0.004 * 10 + 0.05 * 8])


class PrefillRouter(Router):
    """A pre-generation router that reads the SLM: it says it read 30 and 10 tokens to score q1 and q2."""

    name = "prefill_stub"
    mode = "pregen"

    def score(self, inputs: RouterInputs) -> np.ndarray:
        return np.array([0.2, 0.9])

    def slm_reads(self, inputs: RouterInputs) -> np.ndarray:
        return np.array([30.0, 10.0])


def test_a_router_that_reads_the_slm_pays_its_prefill_as_slm_time(split: tuple[RouterInputs, pd.DataFrame]) -> None:
    x, llm = split
    records = build_records(PrefillRouter(), x, llm, COST, LATENCY)
    assert list(records["router_cost"]) == [30.0, 10.0]  # SLM input price 1 per token, no output
    assert list(records["router_latency_model_s"]) == pytest.approx([0.001 * 30, 0.001 * 10])
    share = records["router_latency_s"].to_numpy()
    assert share.sum() > 0 and share[0] == pytest.approx(3 * share[1])  # the timed scoring, split by tokens read
    out = outcomes(records, "pregen", threshold=0.5)  # q1 escalates, q2 stays
    assert list(out["cost"]) == [30.0 + 500.0, 10.0 + 16.0]
    # AROL's summand: the SLM time spent on the escalated query is the router's prefill alone
    assert list(out["overhead_model_s"]) == pytest.approx([0.001 * 30, 0.0])
    assert list(out["latency_model_s"]) == pytest.approx([0.03 + 0.004 * 10 + 0.05 * 20, 0.01 + 0.001 * 10 + 0.01 * 3])


def test_usage_sums_per_question_in_the_given_order(split: tuple[RouterInputs, pd.DataFrame]) -> None:
    x, _ = split
    per_q = usage(x.slm_samples, "slm", pd.Series(["q2", "q1"]), True, COST, LATENCY)
    assert list(per_q["id"]) == ["q2", "q1"]
    assert list(per_q["cost"]) == [56.0, 72.0]


def synthetic_latencies(rng: np.random.Generator, coef: dict[str, tuple[float, float]], n: int,
                        noise: float = 0.0) -> pd.DataFrame:
    parts = []
    for model, (prefill, decode) in coef.items():
        p = rng.integers(5, 400, n)
        o = rng.integers(1, 200, n)
        latency = prefill * p + decode * o
        latency = latency * (1 + noise * rng.standard_normal(n))
        parts.append(pd.DataFrame({"model": model, "n_prompt_tokens": p, "n_output_tokens": o, "latency_s": latency}))
    return pd.concat(parts, ignore_index=True)


def test_fit_latency_model_recovers_known_coefficients() -> None:
    coef = {"slm": (0.0002, 0.004), "llm": (0.003, 0.06)}
    fitted = fit_latency_model(synthetic_latencies(np.random.default_rng(0), coef, 200))
    assert set(fitted.coef) == {"slm", "llm"}
    for model, (prefill, decode) in coef.items():
        assert fitted.coef[model][0] == pytest.approx(prefill, rel=1e-6)
        assert fitted.coef[model][1] == pytest.approx(decode, rel=1e-6)


def test_fit_latency_model_averages_out_noise() -> None:
    coef = {"slm": (0.0002, 0.004), "llm": (0.003, 0.06)}
    fitted = fit_latency_model(synthetic_latencies(np.random.default_rng(1), coef, 2000, noise=0.1))
    for model, (prefill, decode) in coef.items():
        assert fitted.coef[model][0] == pytest.approx(prefill, rel=0.1)
        assert fitted.coef[model][1] == pytest.approx(decode, rel=0.05)
    predicted = fitted.predict("llm", np.array([100]), np.array([50]))
    assert predicted[0] == pytest.approx(0.003 * 100 + 0.06 * 50, rel=0.05)


def test_fit_latency_model_never_returns_negative_speeds() -> None:
    # Latency falls with prompt length here: least squares would give a negative prefill cost.
    samples = pd.DataFrame({"model": "slm", "n_prompt_tokens": [10, 100, 200, 300],
                            "n_output_tokens": [10, 10, 10, 10], "latency_s": [1.0, 0.8, 0.6, 0.4]})
    prefill, decode = fit_latency_model(samples).coef["slm"]
    assert prefill == 0.0 and decode > 0
