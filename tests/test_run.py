"""evaluate() on a synthetic questions + samples table whose answer is known: the SLM is right on easy
questions and wrong on hard ones, the LLM is right almost always, and the SLM's confidence signals
track its correctness. An informative router must then beat random mixing, and every output exists.
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from escalate.evaluation.cost import TokenPriceCost
from escalate.evaluation.metrics import RECORD_COLUMNS, apgr, operating_point, saving_at_iso_accuracy, toa
from escalate.evaluation.run import EvalSettings, evaluate
from escalate.evaluation.thresholds import REFUSED_COLUMN
from escalate.routers.registry import ROUTERS

N_PER_SPLIT = 40
COST = TokenPriceCost({"slm": (0.05, 0.05), "llm": (1.0, 1.0)})
# 26 sweep points instead of the profiles' 101: each point re-runs pandas over the records, and the
# figures asserted here do not depend on the resolution.
SETTINGS = EvalSettings(split="test", delta=0.02, n_points=26, seed=0, profile="synthetic-profile")
# The SLM-signal routers and random: the prompts here are ids, nothing a pre-generation router could learn
# from (tests/test_pregen_routers.py covers those), and there is no SLM checkpoint for the hidden-state
# probes (tests/test_pik_probe.py evaluates those).
STRATEGIES = [name for name, cls in ROUTERS.items()
              if cls.mode == "cascade" and "model_dir" not in inspect.signature(cls).parameters] + ["random"]
PROBABILITY_ROUTERS = tuple(name for name in STRATEGIES if ROUTERS[name].is_probability)


def timings(samples: pd.DataFrame) -> pd.DataFrame:
    """The synthetic samples' latencies, which are constructed per request, as the latency-model input."""
    return samples[["model", "n_prompt_tokens", "n_output_tokens", "latency_s"]]


def synthetic_tables(informative: bool = True, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """calib and test questions with difficulty 1..4: the SLM is right on 1-2 and wrong on 3-4.

    The LLM is right except on every tenth question. SLM confidence (answer probability, token
    probabilities, entropy, agreement of K=3 samples, the confidence a response states) is high when it is right; with
    `informative=False` the answer probability is inverted, so P(T) ranks wrong answers first.
    """
    rng = np.random.default_rng(seed)
    questions, samples = [], []
    for split in ("calib", "test"):
        for i in range(N_PER_SPLIT):
            qid, difficulty, gold = f"{split}-{i:03d}", 1 + i % 4, 10 + i
            questions.append({"id": qid, "task": "arith", "question": f"q {qid}", "answer": str(gold),
                              "split": split, "difficulty": difficulty, "choices": None, "meta": None})
            slm_right = difficulty <= 2
            p_answer = rng.uniform(0.8, 0.98) if slm_right else rng.uniform(0.05, 0.35)
            if not informative:
                p_answer = 1.0 - p_answer
            for k in range(3):
                answer = gold if slm_right else gold + 1 + (k % 2)  # wrong samples disagree
                n_prompt, n_output = 20 + difficulty, 5 + 5 * difficulty + k
                samples.append(sample_row(qid, "slm", split, k, str(answer), slm_right, n_prompt, n_output,
                                          latency=0.001 * n_prompt + 0.01 * n_output,
                                          answer_lp=math.log(p_answer), confident=slm_right, rng=rng))
            llm_right = i % 10 != 9
            n_prompt, n_output = 20 + difficulty, 8 + 6 * difficulty
            samples.append(sample_row(qid, "llm", split, 0, str(gold if llm_right else gold - 1), llm_right,
                                      n_prompt, n_output, latency=0.004 * n_prompt + 0.05 * n_output,
                                      answer_lp=math.log(0.9), confident=True, rng=rng))
    return pd.DataFrame(questions), pd.DataFrame(samples)


def sample_row(qid: str, model: str, split: str, k: int, answer: str, correct: bool, n_prompt: int,
               n_output: int, latency: float, answer_lp: float, confident: bool,
               rng: np.random.Generator) -> dict:
    token_p = rng.uniform(0.85, 0.99, n_output) if confident else rng.uniform(0.2, 0.6, n_output)
    text = f"The answer is {answer}. Confidence: {math.exp(answer_lp):.2f}"
    return {"id": qid, "model": model, "split": split, "sample_idx": k, "text": text,
            "parsed_answer": answer, "correct": correct, "n_prompt_tokens": n_prompt, "n_output_tokens": n_output,
            "token_logprobs": np.log(token_p).tolist(), "answer_logprob": answer_lp,
            "mean_entropy": float(rng.uniform(0.05, 0.3) if confident else rng.uniform(1.0, 2.0)),
            "latency_s": latency}


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    questions, samples = synthetic_tables()
    out = tmp_path_factory.mktemp("eval") / "eval"
    return evaluate(questions, samples, COST, SETTINGS, out, timings(samples), routers=STRATEGIES), out


def summary_row(metrics: dict, strategy: str) -> dict:
    return next(row for row in metrics["summary"] if row["strategy"] == strategy)


def test_writes_every_output(result: tuple[dict, Path]) -> None:
    _, out = result
    for name in ("report.md", "metrics.json", "records.parquet", "curves.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    pngs = {"accuracy_vs_cost.png", "accuracy_vs_call_rate.png", *(f"reliability_{r}.png" for r in PROBABILITY_ROUTERS)}
    assert {p.name for p in out.glob("*.png")} == pngs
    for png in pngs:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reference_accuracies(result: tuple[dict, Path]) -> None:
    metrics, _ = result
    assert metrics["a_slm"] == pytest.approx(0.5)
    assert metrics["a_llm"] == pytest.approx(0.9)
    assert summary_row(metrics, "SLM-only")["accuracy"] == pytest.approx(0.5)
    assert summary_row(metrics, "LLM-only")["cost"] == pytest.approx(1.0)


def test_informative_p_true_beats_random_mixing(result: tuple[dict, Path]) -> None:
    metrics, _ = result
    p_true, rand = summary_row(metrics, "p_true_token"), summary_row(metrics, "random")
    assert p_true["apgr"] > 0.5
    assert p_true["apgr"] > rand["apgr"] + 0.15
    # P(T) separates right from wrong perfectly here, so it ranks like the oracle
    assert p_true["auroc"] == pytest.approx(1.0)
    assert summary_row(metrics, "oracle")["togr"] == 1.0


def test_calib_threshold_transfers_to_test(result: tuple[dict, Path]) -> None:
    metrics, _ = result
    row = summary_row(metrics, "p_true_token")
    assert math.isfinite(row["threshold"])
    # escalating (most of) the hard half, never an easy one, keeps LLM-level accuracy at about half the
    # LLM's cost; a few hard questions the LLM gets wrong anyway may stay with the SLM
    assert 0.35 <= row["call_rate"] <= 0.5
    # chosen on calib, the threshold meets the δ target on test up to one question of sampling noise
    assert row["accuracy"] >= metrics["a_llm"] - SETTINGS.delta - 1 / N_PER_SPLIT
    assert row["accuracy"] > metrics["a_slm"] + 0.3
    assert row["cost"] < 0.7


def test_every_signal_router_is_informative_here(result: tuple[dict, Path]) -> None:
    metrics, _ = result
    for name in STRATEGIES:
        if name != "random":
            assert summary_row(metrics, name)["auroc"] > 0.9, name


def test_records_hold_every_strategy_and_pay_what_it_uses(result: tuple[dict, Path]) -> None:
    _, out = result
    records = pd.read_parquet(out / "records.parquet")
    assert set(RECORD_COLUMNS) | {REFUSED_COLUMN, "strategy"} == set(records.columns)
    assert len(records) == N_PER_SPLIT * len(STRATEGIES)
    assert set(records["strategy"]) == set(STRATEGIES)
    assert records["id"].str.startswith("test-").all()
    greedy = records[records["strategy"] == "p_true_token"].set_index("id")["slm_cost"]
    voted = records[records["strategy"] == "self_consistency"].set_index("id")["slm_cost"]
    assert (voted > 2.5 * greedy).all()  # three samples against one


def test_metrics_json_and_curves(result: tuple[dict, Path]) -> None:
    metrics, out = result
    stored = json.loads((out / "metrics.json").read_text())
    assert stored["context"] == {"profile": "synthetic-profile", "split": "test", "cost_model": COST.describe(),
                                 "seed": 0, "n": N_PER_SPLIT, "delta": 0.02}
    assert summary_row(stored, "p_true_token")["apgr"] == pytest.approx(summary_row(metrics, "p_true_token")["apgr"])
    by_difficulty = {row["difficulty"]: row for row in stored["accuracy_by_difficulty"]}
    assert [by_difficulty[d]["slm"] for d in (1, 2, 3, 4)] == [1.0, 1.0, 0.0, 0.0]
    assert by_difficulty["all"]["slm"] == 0.5 and by_difficulty["all"]["n"] == N_PER_SPLIT
    assert all(by_difficulty[d]["n"] == N_PER_SPLIT // 4 for d in (1, 2, 3, 4))
    # the latency model recovers the per-token speeds the synthetic latencies were made with
    assert stored["latency_model"]["slm"] == pytest.approx([0.001, 0.01], rel=1e-6)
    assert stored["latency_model"]["llm"] == pytest.approx([0.004, 0.05], rel=1e-6)
    curves = json.loads((out / "curves.json").read_text())
    assert set(curves) == set(STRATEGIES) | {"oracle"}
    assert all(len(c["threshold"]) == SETTINGS.n_points + 1 for c in curves.values())


def test_summary_figures_are_read_off_the_plotted_curves(result: tuple[dict, Path]) -> None:
    """One curve per strategy: the one curves.json stores (and the plots draw) gives the summary row's figures."""
    metrics, out = result
    plotted = json.loads((out / "curves.json").read_text())
    a_slm, a_llm, delta = metrics["a_slm"], metrics["a_llm"], SETTINGS.delta
    for name in [*STRATEGIES, "oracle"]:
        curve, row = pd.DataFrame(plotted[name]).astype(float), summary_row(metrics, name)  # +inf is stored as null
        point = operating_point(curve, a_llm, delta)
        assert row["apgr"] == pytest.approx(apgr(curve, a_slm, a_llm), nan_ok=True), name
        assert row["toa"] == pytest.approx(toa(curve)), name
        assert row["saving_at_iso_accuracy"] == pytest.approx(saving_at_iso_accuracy(curve, a_llm, delta), nan_ok=True)
        assert (row["op_cost"], row["op_call_rate"]) == pytest.approx((point["cost"], point["call_rate"])), name


def test_report_names_profile_split_strategies_and_plots(result: tuple[dict, Path]) -> None:
    _, out = result
    report = (out / "report.md").read_text()
    assert report.startswith("# escalate evaluation: synthetic-profile")
    assert "- **profile:** synthetic-profile" in report
    assert "- **split:** test" in report
    assert COST.describe() in report
    for name in [*STRATEGIES, "oracle", "SLM-only", "LLM-only"]:
        assert f"| {name} |" in report
    assert "](accuracy_vs_cost.png)" in report and "](reliability_p_true_token.png)" in report


def test_uninformative_score_does_not_beat_random(tmp_path: Path) -> None:
    questions, samples = synthetic_tables(informative=False)
    metrics = evaluate(questions, samples, COST, SETTINGS, tmp_path / "eval", timings(samples), routers=["p_true_token"])
    row = summary_row(metrics, "p_true_token")
    assert row["apgr"] < 0.5
    assert row["auroc"] == pytest.approx(0.0)
    assert [r["strategy"] for r in metrics["summary"]] == ["p_true_token", "SLM-only", "LLM-only", "oracle"]


def test_every_threshold_policy_is_fitted_on_calib_and_checked_on_test(result: tuple[dict, Path]) -> None:
    metrics, out = result
    rows = {r["policy"]: r for r in metrics["threshold_policies"] if r["strategy"] == "p_true_token"}
    assert list(rows) == ["accuracy", "budget", "cost", "risk"]
    # the objective's pick is the summary's threshold; `met` compares the test figure with the target
    assert rows["accuracy"]["threshold"] == summary_row(metrics, "p_true_token")["threshold"]
    assert rows["accuracy"]["met"] == (rows["accuracy"]["accuracy_loss"] <= SETTINGS.delta + 1e-9)
    assert rows["accuracy"]["accuracy"] == summary_row(metrics, "p_true_token")["accuracy"]
    assert rows["budget"]["calib_call_rate"] <= SETTINGS.budget and rows["cost"]["met"] is None
    # 40 calib questions cannot certify keeping anything at ε = 0.05, α = 0.1 ((1 − ε)^40 > α): LLM-only
    assert rows["risk"]["threshold"] == math.inf and rows["risk"]["call_rate"] == 1.0 and rows["risk"]["met"]
    assert len(metrics["threshold_policies"]) == 4 * len(STRATEGIES)
    assert "## Threshold policies" in (out / "report.md").read_text()


def test_uncertainty_benchmark_covers_every_strategy_and_band(result: tuple[dict, Path]) -> None:
    metrics, out = result
    rows = metrics["uncertainty_benchmark"]
    assert {(r["task"], r["band"]) for r in rows} == {("arith", b) for b in ("all", "1", "2", "3", "4")}
    assert len(rows) == 5 * len(STRATEGIES)
    cell = {(r["strategy"], r["band"]): r for r in rows}
    assert cell[("p_true_token", "all")]["auroc"] == pytest.approx(1.0)
    assert cell[("p_true_token", "all")]["n"] == N_PER_SPLIT
    # the SLM is always right on difficulty 1: AUROC is undefined there, and said to be
    assert cell[("p_true_token", "1")]["slm_accuracy"] == 1.0 and math.isnan(cell[("p_true_token", "1")]["auroc"])
    assert "## Uncertainty benchmark" in (out / "report.md").read_text()


def test_threshold_transfer_holds_each_difficulty_out(result: tuple[dict, Path]) -> None:
    metrics, out = result
    rows = [r for r in metrics["threshold_transfer"] if r["strategy"] == "p_true_token"]
    assert [(r["policy"], r["calibration"]) for r in rows] == [
        (p, c) for p in ("budget", "accuracy") for c in ("in-domain", "constructed", "single source")]
    assert all(r["datasets"] == 4 for r in rows)
    cell = {(r["policy"], r["calibration"]): r for r in rows}
    # P(T) separates right from wrong perfectly in every band, so a band's own calib threshold meets the
    # accuracy target on its test queries
    assert cell[("accuracy", "in-domain")]["met"] == 1.0
    assert all(0 <= r["met"] <= 1 and 0 <= r["call_rate"] <= 1 for r in rows)
    assert "## Threshold transfer" in (out / "report.md").read_text()
