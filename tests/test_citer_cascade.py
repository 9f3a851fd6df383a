"""CITER as a cascade, in process: how a token-level answer is priced, its answers at the τ edges and between,
the token-level bundle spec, and the registry candidate's figures from the citer stage's records."""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from escalate.cascade import MIXED, RESULT_FIELDS
from escalate.citer import STRATEGY
from escalate.citer.cascade import TokenLevelCascade, billed_tokens, token_level_cost
from escalate.citer.router import TokenRouter
from escalate.citer.stage import candidate_figures, priced_saving
from escalate.config import ModelConfig, SamplingConfig, load_profile
from escalate.evaluation.cost import FlopsCost, TokenPriceCost
from escalate.kinds import QUERY_LEVEL, TOKEN_LEVEL
from escalate.models.backends.base import SamplingParams
from escalate.models.backends.hf import HFBackend
from escalate.prompts import format_prompt
from escalate.registry.bundle import BundleError, CascadeSpec
from escalate.registry.publish import rank_candidates
from escalate.serving.batcher import DecodeBatcher

ROOT = Path(__file__).resolve().parents[1]
PRICES = TokenPriceCost({"slm": (0.05, 0.1), "llm": (1.0, 2.0)})
SAMPLING = SamplingConfig(k=1, max_new_tokens=8, batch_size=4)
QUESTIONS = ["Eva has 7 cups. Then gives away 1. How many cups does Eva have now?",
             "Ben has 3 pens. Then gets 4 more. How many pens does Ben have now?",
             "Jon has 8 cards. Then gives away 5. Then gives away 2. How many cards does Jon have now?"]


def test_each_model_is_billed_for_what_it_read_and_wrote() -> None:
    mixed = ["slm", "llm", "slm", "slm", "llm", "slm"]
    # The LLM's last token is the 5th; before it the SLM wrote 3 tokens, which the LLM read to catch up.
    assert billed_tokens(5, mixed) == {"slm": (5, 6), "llm": (5 + 3, 2)}
    assert token_level_cost(PRICES, billed_tokens(5, mixed)) == pytest.approx(
        {"slm": 5 * 0.05 + 6 * 0.1, "llm": 8 * 1.0 + 2 * 2.0})
    # The edges bill exactly one model's plain decoding (and the SLM's, which steps on every token).
    assert token_level_cost(PRICES, billed_tokens(5, ["llm"] * 4)) == {"slm": PRICES.cost("slm", 5, 4),
                                                                       "llm": PRICES.cost("llm", 5, 4)}
    flops = FlopsCost({"slm": 10, "llm": 200})
    assert token_level_cost(flops, billed_tokens(5, ["slm"] * 4)) == {"slm": flops.cost("slm", 5, 4), "llm": 0.0}
    with pytest.raises(ValueError, match="sources"):
        billed_tokens(5, ["slm", "router"])


@pytest.fixture(scope="module")
def router_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return TokenRouter(32, [8]).save(tmp_path_factory.mktemp("router") / "router")  # the pair's SLM is 32 wide


def cascade(model_pair: tuple[Path, Path], router_dir: Path, tau: float) -> TokenLevelCascade:
    slm, llm = model_pair
    return TokenLevelCascade.from_checkpoints(ModelConfig(name="slm"), ModelConfig(name="llm"), {"slm": slm, "llm": llm},
                                              TokenRouter.load(router_dir), tau, PRICES, SAMPLING)


@pytest.mark.parametrize("tau, role", [(0.0, "llm"), (1.0, "slm")])
def test_the_tau_edges_answer_as_plain_greedy_decoding_and_cost_as_it(model_pair, router_dir, tau: float,
                                                                      role: str) -> None:
    out = cascade(model_pair, router_dir, tau).answer(QUESTIONS)
    checkpoint = dict(zip(("slm", "llm"), model_pair))[role]
    alone = HFBackend(str(checkpoint)).generate([format_prompt(q) for q in QUESTIONS],
                                                SamplingParams(max_new_tokens=SAMPLING.max_new_tokens))
    assert [r["answer"] for r in out] == [g[0].text.strip() for g in alone]
    assert len({r["answer"] for r in out}) == len(QUESTIONS)  # real, distinct decodes, not one constant
    for r, (g,) in zip(out, alone):
        assert list(r) == list(RESULT_FIELDS) and (r["model"], r["strategy"], r["threshold"]) == (role, STRATEGY, tau)
        assert r["escalated"] == (role == "llm") and r["cost_router"] == 0.0
        tokens = (g.n_prompt_tokens, g.n_output_tokens)
        assert (r["slm_prompt_tokens"], r["slm_output_tokens"]) == tokens
        assert r["cost_slm"] == PRICES.cost("slm", *tokens)
        assert r["cost_llm"] == (PRICES.cost("llm", *tokens) if role == "llm" else 0.0)
        assert r["cost"] == r["cost_slm"] + r["cost_llm"] and r["latency_s"] >= r["latency_slm_s"] > 0


def test_between_the_edges_both_models_write_and_the_confidence_says_why(model_pair, router_dir) -> None:
    scores = cascade(model_pair, router_dir, 1.0).decoder.generate([format_prompt(q) for q in QUESTIONS], 8)
    tau = float(np.median([s for g in scores for s in g.llm_scores]))  # about half of the SLM's positions
    out = cascade(model_pair, router_dir, tau).answer(QUESTIONS)
    assert MIXED in {r["model"] for r in out}
    for r in out:
        assert r["escalated"] == (r["llm_output_tokens"] > 0) == (r["score"] < 1 - tau)
        assert math.isnan(r["confidence"])  # a per-token router states no P(answer right)
        assert r["model"] == ("slm" if not r["escalated"] else MIXED if r["llm_output_tokens"] < r["slm_output_tokens"]
                              else "llm")
        # The LLM read at least the prompt and wrote no more tokens than the answer has.
        assert r["llm_output_tokens"] == 0 or r["llm_prompt_tokens"] >= r["slm_prompt_tokens"]
        assert r["cost"] == pytest.approx(PRICES.cost("slm", r["slm_prompt_tokens"], r["slm_output_tokens"])
                                          + PRICES.cost("llm", r["llm_prompt_tokens"], r["llm_output_tokens"]))
    assert cascade(model_pair, router_dir, tau).answer([]) == []


def test_concurrent_answers_through_the_batcher_are_the_cascade_s_own(model_pair, router_dir) -> None:
    scores = cascade(model_pair, router_dir, 1.0).decoder.generate([format_prompt(q) for q in QUESTIONS], 8)
    tau = float(np.median([s for g in scores for s in g.llm_scores]))
    served = cascade(model_pair, router_dir, tau)
    questions = QUESTIONS * 3
    batcher = DecodeBatcher(served.decoder, served.max_new_tokens, max_batch=4)
    try:
        with ThreadPoolExecutor(len(questions)) as pool:  # one client per question, as the gateway's workers
            out = list(pool.map(lambda q: served.answer([q], decode=batcher.generate)[0], questions))
    finally:
        batcher.close()
    timing = {k for k in RESULT_FIELDS if k.startswith("latency")}
    alone = served.answer(QUESTIONS) * 3
    assert MIXED in {r["model"] for r in out}
    assert [{k: v for k, v in r.items() if k not in timing} for r in out] == [
        {k: pytest.approx(v, nan_ok=True) if k in ("confidence", "score") else v for k, v in r.items()
         if k not in timing} for r in alone]


def test_token_level_spec_round_trips_and_version_1_files_read_as_query_level() -> None:
    spec = CascadeSpec(STRATEGY, 0.25, ModelConfig(name="s"), ModelConfig(name="l"), PRICES, SAMPLING, 3, "smoke",
                       kind=TOKEN_LEVEL)
    data = json.loads(json.dumps(spec.to_dict()))
    assert (data["format_version"], data["kind"]) == (2, TOKEN_LEVEL) and CascadeSpec.from_dict(data) == spec
    old = {k: v for k, v in {**data, "format_version": 1, "strategy": "entropy"}.items() if k != "kind"}
    assert CascadeSpec.from_dict(old).kind == QUERY_LEVEL
    with pytest.raises(BundleError, match="incomplete"):  # version 2 must say its kind
        CascadeSpec.from_dict({k: v for k, v in data.items() if k != "kind"})
    http = ModelConfig(name="l", backend="openai", endpoint="https://api.example/v1")
    for bad, match in (({"llm": http}, "llm has backend 'openai'"), ({"threshold": 1.5}, r"τ in \[0, 1\]"),
                       ({"strategy": "entropy"}, "strategy is 'citer'"), ({"kind": "sentence"}, "kind must be")):
        with pytest.raises(BundleError, match=match):
            CascadeSpec(**{**spec.__dict__, **bad})


def records(split: str, round_: int, correct_mid: list[bool], llm_mid: list[tuple[int, int]]) -> pd.DataFrame:
    """Two questions (10 prompt tokens, 4 output) at τ = 0 (LLM-only, both right) and τ = 0.5."""
    rows = [{"tau": 0.0, "id": q, "correct": True, "n_prompt_tokens": 10, "n_output_tokens": 4, "n_llm_tokens": 4,
             "n_llm_input_tokens": 10} for q in ("a", "b")]
    rows += [{"tau": 0.5, "id": q, "correct": c, "n_prompt_tokens": 10, "n_output_tokens": 4, "n_llm_tokens": w,
              "n_llm_input_tokens": r} for q, c, (r, w) in zip(("a", "b"), correct_mid, llm_mid)]
    return pd.DataFrame(rows).assign(split=split, round=round_)


def test_the_candidate_is_priced_under_the_registry_cost_model_and_its_round_chosen_on_calib(tmp_path: Path) -> None:
    profile = load_profile("smoke", ROOT)  # delta 0.02
    # Round 1 keeps calib accuracy (the LLM writes one of question a's tokens); round 2 is cheaper
    # (no LLM at all) but loses a calib question, so the objective takes round 1.
    parts = [records("calib", 1, [True, True], [(12, 1), (0, 0)]), records("test", 1, [True, False], [(12, 1), (0, 0)]),
             records("calib", 2, [True, False], [(0, 0), (0, 0)]), records("test", 2, [True, True], [(0, 0), (0, 0)])]
    pd.concat(parts).to_parquet(tmp_path / "records.parquet")
    (tmp_path / "metrics.json").write_text(json.dumps({"context": {"select_split": "calib", "split": "test"},
                                                       "rounds": {"r1": {"tau": 0.5}, "r2": {"tau": 0.5}}}))
    found = candidate_figures(profile, PRICES, tmp_path)
    llm_only = 2 * PRICES.cost("llm", 10, 4)
    with_llm = PRICES.cost("slm", 10, 4) + PRICES.cost("llm", 12, 1)
    cost = (with_llm + PRICES.cost("slm", 10, 4)) / llm_only
    assert (found.round, found.tau, found.router_dir, found.llm_accuracy) == (1, 0.5, tmp_path / "router_r1", 1.0)
    assert found.row == pytest.approx({
        "strategy": STRATEGY, "mode": "token", "round": 1, "threshold": 0.5, "calib_accuracy": 1.0, "calib_cost": cost,
        "calib_llm_accuracy": 1.0, "accuracy": 0.5, "cost": cost, "call_rate": 0.5, "llm_token_share": 1 / 8,
        "ece": None})
    assert found.outcomes.to_dict("list") == {"id": ["a", "b"], "correct": [True, False], "escalated": [True, False],
                                              "cost": [with_llm, PRICES.cost("slm", 10, 4)]}
    entropy = {"strategy": "entropy", "calib_accuracy": 1.0, "calib_llm_accuracy": 1.0, "calib_cost": 0.9}
    assert rank_candidates([entropy, found.row], profile.evaluation.delta) == [STRATEGY, "entropy"]

    pd.concat(parts).drop(columns="n_llm_input_tokens").to_parquet(tmp_path / "records.parquet")
    with pytest.raises(ValueError, match="rerun `escalate citer train`"):
        candidate_figures(profile, PRICES, tmp_path)


def test_the_priced_saving_is_the_cheapest_swept_tau_within_delta_of_llm_only_accuracy() -> None:
    llm_only = 2 * PRICES.cost("llm", 10, 4)
    # τ = 0.5 keeps both answers right without the LLM: the saving is what the SLM alone costs less
    kept = records("test", 2, [True, True], [(0, 0), (0, 0)])
    assert priced_saving(kept, PRICES, 0.02) == pytest.approx(1 - 2 * PRICES.cost("slm", 10, 4) / llm_only)
    # τ = 0.5 loses question b: only τ = 0 is within δ, the LLM writing every token and the SLM still reading and
    # scoring each one (its router runs on the SLM's hidden state), so CITER there costs more than LLM-only
    lost = records("test", 1, [True, False], [(12, 1), (0, 0)])
    at_zero = 2 * (PRICES.cost("slm", 10, 4) + PRICES.cost("llm", 10, 4)) / llm_only
    assert priced_saving(lost, PRICES, 0.02) == pytest.approx(1 - at_zero)
