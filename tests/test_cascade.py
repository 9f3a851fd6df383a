"""The online cascade routes, prices and times new questions the way offline evaluation scored them."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pandas as pd
import pytest

from escalate.cascade import RESULT_FIELDS, Cascade, question_rows
from escalate.config import SamplingConfig
from escalate.evaluation import decision, metrics, thresholds
from escalate.evaluation.cost import TokenPriceCost
from escalate.models.backends.base import Generation, GenerationBackend, SamplingParams
from escalate.routers.base import Router, RouterInputs
from escalate.routers.registry import make_router
from escalate.sater.preferences import REFUSAL_COMPLETION

ROOT = Path(__file__).resolve().parents[1]
COST = TokenPriceCost({"slm": (0.05, 0.1), "llm": (1.0, 2.0)})
# question -> (greedy answer, log P(T) of the answer token); SLM answers and confidences by design.
SLM = {"sure?": ("4", math.log(0.9)), "unsure?": ("7", math.log(0.2)), "middle?": ("5", math.log(0.6))}


def _gen(answer: str, answer_lp: float, latency: float) -> Generation:
    pieces = [" The", " answer", " is", f" {answer}", "."]
    offsets = [sum(len(p) for p in pieces[:i]) for i in range(len(pieces))]
    return Generation(text="".join(pieces), token_ids=list(range(5)),
                      token_logprobs=[-0.1, -0.1, -0.1, answer_lp, -0.1], token_entropies=[0.5] * 5,
                      token_offsets=offsets, n_prompt_tokens=10, latency_s=latency)


class Scripted(GenerationBackend):
    """Answers from a table keyed by question; sampled generations answer `sampled` (a vote-splitter)."""

    def __init__(self, table: dict[str, tuple[str, float]], latency: float, sampled: str | None = None) -> None:
        self.table, self.latency, self.sampled, self.calls = table, latency, sampled, []

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Generation]]:
        self.calls.append((list(prompts), params))
        out = []
        for prompt in prompts:
            question = prompt.removeprefix("Question: ").removesuffix("\nAnswer:")
            answer, lp = self.table.get(question, ("42", -0.01))
            if params.temperature > 0 and self.sampled is not None:
                answer = self.sampled
            out.append([_gen(answer, lp, self.latency) for _ in range(params.n)])
        return out


def cascade(router: str, threshold: float, k: int = 3, sampled: str | None = None) -> Cascade:
    slm, llm = Scripted(SLM, 0.01, sampled), Scripted({}, 0.5)
    return Cascade(slm, llm, make_router(router), threshold, COST, SamplingConfig(k=k, max_new_tokens=8), seed=3)


def test_cascade_escalates_below_threshold_and_charges_both_models() -> None:
    c = cascade("p_true_token", threshold=0.5)
    out = c.answer(list(SLM))
    assert [r["model"] for r in out] == ["slm", "llm", "slm"]
    assert [r["confidence"] for r in out] == pytest.approx([0.9, 0.2, 0.6])
    assert out[0]["parsed_answer"] == "4" and out[1]["parsed_answer"] == "42"  # the LLM's greedy answer
    assert out[0]["answer"] == "The answer is 4."
    # A cascade pays the SLM attempt everywhere and the LLM where it escalated (greedy only: 1 sample each).
    slm_cost, llm_cost = 0.05 * 10 + 0.1 * 5, 1.0 * 10 + 2.0 * 5
    assert [r["cost_slm"] for r in out] == pytest.approx([slm_cost] * 3)
    assert [r["cost"] for r in out] == pytest.approx([slm_cost, slm_cost + llm_cost, slm_cost])
    assert out[1]["latency_s"] == pytest.approx(0.01 + 0.5 + out[1]["latency_router_s"])
    assert list(out[0]) == list(RESULT_FIELDS)
    (slm_prompts, slm_params), = c.slm.calls  # one greedy SLM call over all questions, no sampling
    assert len(slm_prompts) == 3 and slm_params.temperature == 0 and slm_params.n == 1 and slm_params.seed == 3
    (llm_prompts, llm_params), = c.llm.calls
    assert llm_prompts == ["Question: unsure?\nAnswer:"] and llm_params.temperature == 0


def test_a_score_that_is_not_a_probability_is_reported_as_a_score_not_a_confidence() -> None:
    out = cascade("entropy", threshold=-math.inf).answer(list(SLM))
    assert all(math.isnan(r["confidence"]) for r in out)  # a negated entropy is no P(right)
    assert all(math.isfinite(r["score"]) and r["score"] <= 0 for r in out)
    p_true = cascade("p_true_token", threshold=-math.inf).answer(list(SLM))
    assert [r["confidence"] for r in p_true] == [r["score"] for r in p_true]  # where it is one, both say it


def test_threshold_extremes_never_and_always_escalate() -> None:
    assert {r["model"] for r in cascade("p_true_token", -math.inf).answer(list(SLM))} == {"slm"}
    assert {r["model"] for r in cascade("p_true_token", math.inf).answer(list(SLM))} == {"llm"}


def test_voting_strategy_pays_for_all_k_samples_and_answers_with_the_vote() -> None:
    # Greedy says 4 on "sure?", both sampled say 9: the vote is 9 with share 2/3.
    c = cascade("self_consistency", threshold=0.5, k=3, sampled="9")
    out = c.answer(["sure?"])
    assert len(c.slm.calls) == 2 and c.slm.calls[1][1].n == 2 and c.slm.calls[1][1].temperature > 0
    assert out[0]["model"] == "slm" and out[0]["parsed_answer"] == "9" and out[0]["answer"] == "The answer is 9."
    assert out[0]["confidence"] == pytest.approx(2 / 3)
    assert out[0]["cost_slm"] == pytest.approx(3 * (0.05 * 10 + 0.1 * 5)) and out[0]["slm_output_tokens"] == 15


def test_a_greedy_strategy_never_draws_the_extra_samples() -> None:
    c = cascade("p_true_token", threshold=0.5, k=4)
    c.answer(list(SLM))
    assert len(c.slm.calls) == 1


def test_pregen_router_never_calls_the_slm_for_escalated_queries() -> None:
    questions = [f"q{i}?" for i in range(8)]
    c = cascade("random", threshold=0.5)
    out = c.answer(questions)
    scores = np.random.default_rng(0).random(8)  # RandomRouter(seed=0)'s scores for a batch of 8
    escalated = scores < 0.5
    assert [r["model"] == "llm" for r in out] == list(escalated) and 0 < escalated.sum() < 8
    (slm_prompts, _), = c.slm.calls
    assert slm_prompts == [f"Question: {q}\nAnswer:" for q, e in zip(questions, escalated) if not e]
    assert all(r["cost_slm"] == 0 and r["latency_slm_s"] == 0 for r in out if r["model"] == "llm")
    assert all(r["cost_llm"] == 0 for r in out if r["model"] == "slm")


def test_choices_become_lettered_prompts_and_bad_input_is_refused() -> None:
    rows = question_rows(["Pick one?"], [["red", "blue"]])
    assert rows[0]["choices"] == '["red", "blue"]'
    c = cascade("p_true_token", threshold=0.5)
    c.answer(["Pick one?"], [["red", "blue"]])
    assert c.slm.calls[0][0] == ["Question: Pick one?\nA. red\nB. blue\nAnswer:"]
    assert c.answer([]) == []
    with pytest.raises(ValueError, match="non-empty strings"):
        c.answer(["ok", "  "])
    with pytest.raises(TypeError, match="list of strings"):
        c.answer("one string")  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="llm"):
        Cascade(c.slm, c.llm, make_router("entropy"), 0.5, TokenPriceCost({"slm": (1.0, 1.0)}), SamplingConfig())


def test_cascade_reproduces_the_offline_samples_it_was_evaluated_on(smoke: Path) -> None:
    """Same prompts, generation parameters, rows and router: the served answer is the evaluated one."""
    from escalate.config import load_profile
    from escalate.models.backends.hf import HFBackend

    profile = load_profile("smoke", ROOT)
    questions = pd.read_parquet(smoke / "questions.parquet").query("split == 'test'").reset_index(drop=True)
    samples = pd.read_parquet(smoke / "samples.parquet")
    greedy = samples[samples["sample_idx"] == 0].set_index(["model", "id"])
    slm_offline, llm_offline = greedy.loc["slm"].loc[questions["id"]], greedy.loc["llm"].loc[questions["id"]]
    # exp(mean token log-probability), as the evaluation scored it; split at the widest gap mid-range
    # so both models answer some questions and tiny float noise cannot flip a decision.
    offline_score = np.array([np.exp(np.mean(lps)) for lps in slm_offline["token_logprobs"]])
    ordered = np.sort(offline_score)
    middle = ordered[len(ordered) // 4 : 3 * len(ordered) // 4 + 1]
    gap = int(np.argmax(np.diff(middle)))
    threshold = float((middle[gap] + middle[gap + 1]) / 2)
    cost = TokenPriceCost({r: tuple(p) for r, p in profile.cost.prices.items()})
    c = Cascade(HFBackend(str(smoke / "zoo" / "slm")), HFBackend(str(smoke / "zoo" / "llm")),
                make_router("mean_logprob"), threshold, cost, profile.sampling, profile.seed)
    out = pd.DataFrame(c.answer(list(questions["question"])))

    assert np.allclose(out["score"], offline_score, rtol=0, atol=1e-7)
    escalated = offline_score < threshold
    assert 0 < escalated.sum() < len(escalated)
    assert list(out["model"]) == ["llm" if e else "slm" for e in escalated]
    expected = np.where(escalated, llm_offline["text"], slm_offline["text"])
    assert list(out["answer"]) == [t.strip() for t in expected]  # served text is trimmed
    slm_cost, llm_cost = ([cost.cost(role, p, o) for p, o in zip(rows["n_prompt_tokens"], rows["n_output_tokens"])]
                          for role, rows in (("slm", slm_offline), ("llm", llm_offline)))
    assert np.allclose(out["cost"], np.array(slm_cost) + escalated * np.array(llm_cost))


class PrefillRouter(Router):
    """A pre-generation router that read 30 SLM tokens per question to score it, and keeps 'sure?' only."""

    name = "prefill_stub"
    mode = "pregen"

    def score(self, inputs: RouterInputs) -> np.ndarray:
        return (inputs.questions["question"] == "sure?").to_numpy(float)

    def slm_reads(self, inputs: RouterInputs) -> np.ndarray:
        return np.full(len(inputs.questions), 30.0)


def test_a_router_that_reads_the_slm_is_priced_online_as_offline() -> None:
    c = Cascade(Scripted(SLM, 0.01), Scripted({}, 0.5), PrefillRouter(), 0.5, COST, SamplingConfig(k=1, max_new_tokens=8))
    out = c.answer(["sure?", "unsure?"])
    assert [r["model"] for r in out] == ["slm", "llm"]
    assert [r["cost_router"] for r in out] == pytest.approx([30 * 0.05] * 2)  # what records.read_cost charges
    assert all(r["cost"] == pytest.approx(r["cost_router"] + r["cost_slm"] + r["cost_llm"]) for r in out)


class Refusing(Scripted):
    """The SATER SLM's side of the script: it refuses `refuses` and answers the rest as Scripted does."""

    def __init__(self, refuses: str) -> None:
        super().__init__(SLM, 0.01)
        self.refuses = refuses

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Generation]]:
        out = super().generate(prompts, params)
        for prompt, gens in zip(prompts, out):
            if self.refuses in prompt:
                gens[:] = [Generation(text=REFUSAL_COMPLETION, token_ids=[7], token_logprobs=[-0.05],
                                      token_entropies=[0.1], token_offsets=[0], n_prompt_tokens=10, latency_s=0.01)
                           for _ in gens]
        return out


@pytest.mark.parametrize("router", ["random", "p_true_token"])
def test_a_kept_refusal_is_answered_by_the_llm_after_the_slm(router: str) -> None:
    c = Cascade(Refusing("unsure?"), Scripted({}, 0.5), make_router(router), -1e300, COST,
                SamplingConfig(k=1, max_new_tokens=8))
    out = c.answer(list(SLM))  # the threshold keeps everything the router scores, pre-generation or not
    assert [r["model"] for r in out] == ["slm", "llm", "slm"]
    assert out[1]["escalated"] and out[1]["parsed_answer"] == "42" and "know" not in out[1]["answer"]
    assert out[1]["cost"] == pytest.approx((0.05 * 10 + 0.1 * 1) + (1.0 * 10 + 2.0 * 5))  # the refusal, then the LLM
    (llm_prompts, _), = c.llm.calls
    assert llm_prompts == ["Question: unsure?\nAnswer:"]


def test_threshold_minus_infinity_serves_even_a_refusal() -> None:
    c = Cascade(Refusing("unsure?"), Scripted({}, 0.5), make_router("random"), -math.inf, COST,
                SamplingConfig(k=1, max_new_tokens=8))
    assert [r["model"] for r in c.answer(list(SLM))] == ["slm"] * 3 and not c.llm.calls


# The scripted questions' scores for the shared-rule test: "middle?" is kept at 0.5, and refuses below.
SCORES = {"sure?": 0.9, "unsure?": 0.2, "middle?": 0.6}


class ScoredCascade(Router):
    """A cascade router with scores by design (NaN for questions it has none for)."""

    name = "scored_stub"

    def score(self, inputs: RouterInputs) -> np.ndarray:
        return inputs.questions["question"].map(SCORES).to_numpy(float)


class ScoredPregen(ScoredCascade):
    mode = "pregen"


def offline_records(questions: list[str], refuses: str) -> pd.DataFrame:
    """What evaluation would record for the scripted models: Scripted's prices, the refusal's one output token."""
    slm, refusal, llm = 0.05 * 10 + 0.1 * 5, 0.05 * 10 + 0.1 * 1, 1.0 * 10 + 2.0 * 5
    n = len(questions)
    return pd.DataFrame({
        "id": questions, "score": [SCORES[q] for q in questions], "slm_correct": True, "llm_correct": True,
        "slm_cost": [refusal if q == refuses else slm for q in questions], "llm_cost": llm, "router_cost": 0.0,
        **{f"{m}_latency{k}_s": np.zeros(n) for m in ("router", "slm", "llm") for k in ("", "_model")},
        "slm_refused": [q == refuses for q in questions],
    })


@pytest.mark.parametrize("router", [ScoredCascade, ScoredPregen])
@pytest.mark.parametrize("threshold", [-math.inf, 0.5, 0.7, math.inf])
def test_online_and_offline_decide_and_price_by_one_rule(router: type[Router], threshold: float) -> None:
    """The cascade's decisions and costs at a threshold are what metrics.outcomes and Outcomes.curve say
    of the same scores and refusals: a kept refusal escalates after the SLM (at 0.5), except at −inf."""
    c = Cascade(Refusing("middle?"), Scripted({}, 0.5), router(), threshold, COST, SamplingConfig(k=1, max_new_tokens=8))
    online = pd.DataFrame(c.answer(list(SLM)))
    table = offline_records(list(SLM), "middle?")
    offline = metrics.outcomes(table, router.mode, threshold)
    assert online["escalated"].tolist() == offline["escalated"].tolist()
    assert online["cost"].tolist() == pytest.approx(offline["cost"].tolist())
    if threshold == 0.5:
        assert online["escalated"].tolist() == [False, True, True]  # "middle?" kept, refused, then the LLM
    curve = thresholds.Outcomes.from_records(table, router.mode).curve(np.array([threshold]))
    assert curve["call_rate"][0] == pytest.approx(online["escalated"].mean())
    assert curve["cost"][0] * table["llm_cost"].sum() == pytest.approx(online["cost"].sum())


@pytest.mark.parametrize("router", [ScoredCascade, ScoredPregen])
def test_a_nan_score_fails_closed_online_as_the_rule_says(router: type[Router]) -> None:
    questions = ["sure?", "no score?"]
    for threshold in (-math.inf, 0.5, math.inf):
        c = Cascade(Scripted(SLM, 0.01), Scripted({}, 0.5), router(), threshold, COST, SamplingConfig(k=1, max_new_tokens=8))
        online = [r["escalated"] for r in c.answer(questions)]
        assert online == decision.escalates([0.9, math.nan], threshold).tolist()
        assert online == [threshold == math.inf, threshold > -math.inf]


def without_latency(results: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("latency")} for r in results]


@pytest.mark.parametrize(("router", "threshold"), [("p_true_token", 0.5), ("self_consistency", 0.7),
                                                   ("random", 0.5), ("sater_refusal", 0.5)])
def test_the_async_answer_is_the_blocking_answer(router: str, threshold: float) -> None:
    """One plan, two drivers: the gateway's async path routes, answers and prices as the blocking one."""
    questions = [*SLM, "other?"]
    blocking = cascade(router, threshold, sampled="4").answer(questions)
    awaited = asyncio.run(cascade(router, threshold, sampled="4").answer_async(questions))
    assert without_latency(awaited) == without_latency(blocking)
    assert {r["model"] for r in blocking} == {"slm", "llm"}  # both branches of the plan ran


@pytest.mark.parametrize(("router", "on_thread"), [("p_true_token", False), ("entropy", False), ("random", True)])
def test_a_cheap_router_is_scored_on_the_event_loop_and_others_on_a_thread(
        router: str, on_thread: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Router.cheap_to_score keeps the gateway's loop free of thread hops; a router with a model of its own
    (not cheap: random stands in for one here) is scored on a worker thread, so it cannot stall the loop."""
    hops: list[str] = []
    real = anyio.to_thread.run_sync

    async def spy(fn: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(fn, "__name__", str(fn)))
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", spy)
    asyncio.run(cascade(router, 0.5).answer_async(list(SLM)))
    assert ("_advance" in hops) == on_thread
