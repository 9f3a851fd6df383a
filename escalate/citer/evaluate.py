"""CITER on held-out questions: a τ sweep of token-level decoding, priced in bytes moved, FLOPs and time.

Each swept τ decodes every question (escalate.citer.decode) and stores one record per question, so
every figure here is recomputed from `records.parquet` alone. Costs are normalized by LLM-only greedy
decoding of the same questions (what τ = 0 writes, priced as the LLM alone would pay for it).
The query-level strategies of the evaluate stage (P(T) and the other cascades, the pre-generation
routers, SATER's refusal cascade when its stage has run) are re-priced under the same cost models from
their stored samples, so CITER and the cascades are compared on one scale.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from escalate.citer.cascade import billed_tokens, token_level_cost
from escalate.citer.decode import ModelCost, TokenLevelDecoder
from escalate.data.graders import GRADERS
from escalate.evaluation import curves
from escalate.evaluation.cost import BytesMovedCost, CostModel, FlopsCost
from escalate.evaluation.records import LatencyModel, build_records
from escalate.models.backends.base import SamplingParams
from escalate.prompts import format_prompt
from escalate.routers.base import Router, RouterInputs
from escalate.routers.state import load_router
from escalate.sampling import grader_kind
from escalate.sater.routers.refusal import SaterRefusalRouter

# n_llm_input_tokens: what the LLM read that it did not write (cascade.billed_tokens), so a record can be
# priced under token prices as the served cascade prices its answer.
RECORD_COLUMNS = ("tau", "id", "correct", "n_prompt_tokens", "n_output_tokens", "n_llm_tokens", "n_llm_input_tokens",
                  "llm_passes",
                  "bytes_slm", "bytes_llm", "bytes_router", "flops_slm", "flops_llm", "flops_router", "latency_s",
                  "finish_reason", "text")
CURVE_COLUMNS = ("threshold", "accuracy", "cost", "flops", "llm_token_share", "call_rate", "wall_s")
# SATER's cascade routes with the stage-II SLM's own samples (model "sater2" in the sater stage's table).
SLM_VARIANTS = {"sater_refusal": "sater2"}


# The sweep's smallest share of tokens for the LLM (above τ = 1's none): where token routing pays off.
MIN_LLM_SHARE = 0.002


def sweep_taus(scores: np.ndarray, n: int) -> list[float]:
    """τ = 0, τ = 1 and n − 2 values between that give the LLM geometrically spaced shares of positions.

    The values are quantiles of the router's scores on labelled positions: τ at the (1 − s)-quantile
    sends about a share s of tokens to the LLM. Shares run from 1/2 down to MIN_LLM_SHARE, densest
    where the LLM writes few tokens, since that is where token-level routing saves; a grid even in τ
    or in share would spend its points where the LLM writes most of the answer.
    """
    shares = np.geomspace(0.5, MIN_LLM_SHARE, n - 2)
    inner = np.quantile(np.asarray(scores, float), 1 - shares) if len(scores) else []
    return sorted({0.0, 1.0, *(float(t) for t in inner if 0 < t < 1)})


def decode_records(slm, llm, tokenizer, router, taus: list[float], questions: pd.DataFrame,
                   max_new_tokens: int, batch_size: int) -> pd.DataFrame:
    """One record per question per τ: correctness, tokens, and what each model moved and computed."""
    prompts = [format_prompt(q, c) for q, c in zip(questions["question"], questions["choices"])]
    grades = [GRADERS[grader_kind(row)] for _, row in questions.iterrows()]
    rows = []
    for tau in taus:
        gens = TokenLevelDecoder(slm, llm, tokenizer, router, tau, batch_size).generate(prompts, max_new_tokens)
        for gen, qid, answer, grade in zip(gens, questions["id"], questions["answer"], grades):
            rows.append({
                "tau": tau, "id": qid, "correct": bool(grade(gen.text, str(answer))),
                "n_prompt_tokens": gen.n_prompt_tokens, "n_output_tokens": gen.n_output_tokens,
                "n_llm_tokens": gen.n_llm_tokens, "n_llm_input_tokens": billed_tokens(gen.n_prompt_tokens, gen.sources)["llm"][0],
                "llm_passes": gen.llm_passes,
                **{f"bytes_{r}": v for r, v in gen.bytes_moved.items()}, **{f"flops_{r}": v for r, v in gen.flops.items()},
                "latency_s": gen.latency_s, "finish_reason": gen.finish_reason, "text": gen.text,
            })
    return pd.DataFrame(rows, columns=list(RECORD_COLUMNS))


def plain_costs(records: pd.DataFrame, cost: ModelCost) -> tuple[float, float]:
    """(bytes, FLOPs) of decoding these records' tokens with one model alone, summed over questions.

    The same accounting as the token-level decoder: one pass per output token but the last, the
    prompt in the first.
    """
    n_p, n_o = records["n_prompt_tokens"].to_numpy(int), records["n_output_tokens"].to_numpy(int)
    bytes_model = BytesMovedCost({"m": cost.weight_bytes}, {"m": cost.kv_bytes_per_token})
    total_bytes = sum(bytes_model.cost("m", int(p), int(o)) for p, o in zip(n_p, n_o))
    return float(total_bytes), float(cost.pass_flops(int((n_p + n_o - 1).sum())))


def references(records: pd.DataFrame, costs: dict[str, ModelCost]) -> pd.DataFrame:
    """LLM-only (τ = 0's tokens) and SLM-only (τ = 1's), priced as each model alone: no router, no partner."""
    llm_only, slm_only = records[records["tau"] == 0.0], records[records["tau"] == 1.0]
    llm_bytes, llm_flops = plain_costs(llm_only, costs["llm"])
    slm_bytes, slm_flops = plain_costs(slm_only, costs["slm"])
    return pd.DataFrame({
        "accuracy": [slm_only["correct"].mean(), llm_only["correct"].mean()],
        "cost": [slm_bytes / llm_bytes, 1.0], "flops": [slm_flops / llm_flops, 1.0],
        "bytes_total": [slm_bytes, llm_bytes], "flops_total": [slm_flops, llm_flops],
        "call_rate": [0.0, 1.0],
    }, index=[curves.SLM_ONLY, curves.LLM_ONLY])


def curve(records: pd.DataFrame, refs: pd.DataFrame) -> pd.DataFrame:
    """Per τ: accuracy, bytes and FLOPs over LLM-only's, the LLM's share of tokens, the share of queries
    the LLM wrote any token of, and the batch-amortised wall seconds per query."""
    by_tau = records.assign(
        bytes=records[["bytes_slm", "bytes_llm", "bytes_router"]].sum(axis=1),
        flops=records[["flops_slm", "flops_llm", "flops_router"]].sum(axis=1),
        called=records["n_llm_tokens"] > 0,
    ).groupby("tau")
    sums = by_tau[["bytes", "flops", "n_llm_tokens", "n_output_tokens"]].sum()
    return pd.DataFrame({
        "threshold": sums.index.to_numpy(float),
        "accuracy": by_tau["correct"].mean().to_numpy(float),
        "cost": (sums["bytes"] / refs.at[curves.LLM_ONLY, "bytes_total"]).to_numpy(float),
        "flops": (sums["flops"] / refs.at[curves.LLM_ONLY, "flops_total"]).to_numpy(float),
        "llm_token_share": (sums["n_llm_tokens"] / sums["n_output_tokens"]).to_numpy(float),
        "call_rate": by_tau["called"].mean().to_numpy(float),
        "wall_s": by_tau["latency_s"].mean().to_numpy(float),
    }, columns=list(CURVE_COLUMNS))


def single_request_latency(slm, llm, tokenizer, router, taus: list[float], questions: pd.DataFrame,
                           max_new_tokens: int) -> dict[float, float]:
    """Mean wall seconds per question decoded alone (batch 1) at each τ: what one request waits.

    Batched sweeps share their time among sequences and run the LLM for all of them whenever one
    needs it, so only unbatched decoding says what token-level routing saves in time.
    """
    prompts = [format_prompt(q, c) for q, c in zip(questions["question"], questions["choices"])]
    out = {}
    for tau in taus:
        decoder = TokenLevelDecoder(slm, llm, tokenizer, router, tau, batch_size=1)
        start = time.perf_counter()
        for prompt in prompts:
            decoder.generate([prompt], max_new_tokens)
        out[tau] = (time.perf_counter() - start) / max(1, len(prompts))
    return out


def plain_latency(backends: dict, questions: pd.DataFrame, max_new_tokens: int) -> dict[str, float]:
    """Mean wall seconds per question of each model's own greedy decoding, one request at a time."""
    prompts = [format_prompt(q, c) for q, c in zip(questions["question"], questions["choices"])]
    params = SamplingParams(max_new_tokens=max_new_tokens)
    out = {}
    for role, backend in backends.items():
        start = time.perf_counter()
        for prompt in prompts:
            backend.generate([prompt], params)
        out[role] = (time.perf_counter() - start) / max(1, len(prompts))
    return out


def query_level_curves(questions: pd.DataFrame, samples: pd.DataFrame, routers: dict[str, Router],
                       cost: CostModel, split: str, n_points: int) -> dict[str, pd.DataFrame]:
    """Each query-level strategy's sweep on `split` under `cost` (router name -> curve).

    `samples` holds the SLM's ("slm") and the LLM's ("llm") samples; a router whose name is in
    SLM_VARIANTS reads another SLM's samples, which are priced as the SLM's (same architecture).
    No latency is compared here, so the records carry none.
    """
    q = questions[questions["split"] == split].reset_index(drop=True)
    s = samples[samples["id"].isin(q["id"])]
    llm = s[s["model"] == "llm"]
    no_latency = LatencyModel({"slm": (0.0, 0.0), "llm": (0.0, 0.0)})
    out = {}
    for name, router in routers.items():
        slm_model = SLM_VARIANTS.get(name, "slm")
        inputs = RouterInputs(q, s[s["model"] == slm_model].assign(model="slm"))
        out[name] = curves.sweep(build_records(router, inputs, llm, cost, no_latency), router.mode, n_points)
    return out


def load_query_level(eval_dir: Path, sater_samples: Path, samples: pd.DataFrame) -> tuple[dict[str, Router], pd.DataFrame]:
    """The evaluate stage's fitted routers (random is a reference, not a router to compare) and, when
    the SATER stage has run, its refusal cascade; returns them with the samples they read."""
    routers: dict[str, Router] = {}
    for path in sorted(p for p in (eval_dir / "routers").glob("*") if p.is_dir()):
        router = load_router(path)
        if router.name != "random":
            routers[path.name] = router
    if sater_samples.is_file():
        sater = pd.read_parquet(sater_samples)
        samples = pd.concat([samples, sater[sater["model"] == SLM_VARIANTS["sater_refusal"]]], ignore_index=True)
        routers["sater_refusal"] = SaterRefusalRouter()
    return routers, samples


def cost_at_accuracy(curve_: pd.DataFrame, accuracy: float) -> float:
    """The cheapest normalized cost of a point at least this accurate; NaN when none is."""
    ok = curve_[curve_["accuracy"] >= accuracy - 1e-9]
    return float(ok["cost"].min()) if len(ok) else math.nan


def compare(curves_: dict[str, pd.DataFrame], targets: dict[str, float]) -> list[dict]:
    """Per strategy, the cheapest normalized cost of a point reaching each target accuracy (NaN: none does)."""
    return [{"strategy": name, **{f"cost_at_{k}": cost_at_accuracy(c, a) for k, a in targets.items()}}
            for name, c in curves_.items()]


def bytes_and_flops(costs: dict[str, ModelCost]) -> tuple[BytesMovedCost, FlopsCost]:
    """The query-level cost models that price a generation as the token-level decoder does."""
    roles = ("slm", "llm")
    return (BytesMovedCost({r: costs[r].weight_bytes for r in roles}, {r: costs[r].kv_bytes_per_token for r in roles}),
            FlopsCost({r: costs[r].n_params for r in roles}))


def priced_point(records: pd.DataFrame, tau: float, cost: CostModel) -> tuple[dict[str, float], pd.DataFrame]:
    """CITER at one swept τ of one round on one split, priced under a query-level cost model (the registry's).

    Returns the figures (accuracy; cost over LLM-only; call rate, the share of queries the LLM wrote
    any token of; the LLM's share of tokens; LLM-only accuracy) and the per-query outcomes (id,
    correct, escalated, cost). Each answer is priced as the served cascade prices it
    (cascade.token_level_cost), LLM-only as the LLM alone writing τ = 0's tokens, as `references` does.
    """
    missing = sorted({"n_llm_input_tokens", "tau"} - set(records.columns))
    if missing:
        raise ValueError(f"CITER records lack columns {missing}; rerun `escalate citer train` to write them")
    taus = records["tau"].drop_duplicates().to_numpy(float)
    near = taus[np.isclose(taus, tau, rtol=0, atol=1e-12)]
    if 0.0 not in taus or not len(near):
        raise ValueError(f"τ = {tau} and τ = 0 (LLM-only) must both be swept in these records; swept: {sorted(taus)}")
    at = records[records["tau"] == near[0]].reset_index(drop=True)
    llm_only = records[records["tau"] == 0.0].set_index("id").loc[at["id"]]
    paid = [sum(token_level_cost(cost, {"slm": (int(r.n_prompt_tokens), int(r.n_output_tokens)),
                                       "llm": (int(r.n_llm_input_tokens), int(r.n_llm_tokens))}).values())
            for r in at.itertuples(index=False)]
    alone = sum(cost.cost("llm", int(p), int(o)) for p, o in zip(llm_only["n_prompt_tokens"], llm_only["n_output_tokens"]))
    outcomes = pd.DataFrame({"id": at["id"], "correct": at["correct"].astype(bool), "escalated": at["n_llm_tokens"] > 0,
                             "cost": np.asarray(paid, float)})
    figures = {"accuracy": float(outcomes["correct"].mean()), "cost": float(outcomes["cost"].sum() / alone),
               "call_rate": float(outcomes["escalated"].mean()),
               "llm_token_share": float(at["n_llm_tokens"].sum() / at["n_output_tokens"].sum()),
               "llm_accuracy": float(llm_only["correct"].mean())}
    return figures, outcomes
