"""Per-query records: what each strategy's SLM and LLM parts cost, took and got right.

Everything METRICS.md reports is computed from these rows alone (STYLE.md 9), so sweeps and
reports can be recomputed offline from `records.parquet` without generating anything.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from escalate.evaluation.cost import CostModel
from escalate.evaluation.thresholds import REFUSED_COLUMN
from escalate.routers.base import Router, RouterInputs


@dataclass(frozen=True)
class LatencyModel:
    """Deterministic latency: seconds per prompt token (prefill) + seconds per output token (decode).

    Fitted per model by non-negative least squares on the measured sample latencies, so the model
    reflects this machine's speed but not its noise (METRICS.md asks for both).
    """

    coef: dict[str, tuple[float, float]]

    def predict(self, role: str, n_prompt: np.ndarray, n_output: np.ndarray) -> np.ndarray:
        prefill, decode = self.coef[role]
        return prefill * np.asarray(n_prompt, float) + decode * np.asarray(n_output, float)


def fit_latency_model(samples: pd.DataFrame) -> LatencyModel:
    coef = {}
    for role, g in samples.groupby("model"):
        x = g[["n_prompt_tokens", "n_output_tokens"]].to_numpy(float)
        solution, _ = nnls(x, g["latency_s"].to_numpy(float))
        coef[str(role)] = (float(solution[0]), float(solution[1]))
    return LatencyModel(coef)


def usage(samples: pd.DataFrame, role: str, ids: pd.Series, all_samples: bool, cost: CostModel,
          latency: LatencyModel) -> pd.DataFrame:
    """Per question (in `ids` order): the cost and time of the samples a strategy pays for."""
    s = samples if all_samples else samples[samples["sample_idx"] == 0]
    s = s.assign(
        cost=[cost.cost(role, p, o) for p, o in zip(s["n_prompt_tokens"], s["n_output_tokens"])],
        latency_model_s=latency.predict(role, s["n_prompt_tokens"], s["n_output_tokens"]),
    )
    per_q = s.groupby("id")[["cost", "latency_s", "latency_model_s"]].sum()
    return per_q.loc[ids].reset_index()


def read_cost(reads: np.ndarray | None, n: int, cost: CostModel) -> np.ndarray:
    """Per question, the price of the SLM tokens a router read to score it (Router.slm_reads; None: 0), as SLM
    input tokens: the same for offline records and the online cascade."""
    if reads is None:
        return np.zeros(n)
    return np.array([cost.cost("slm", int(t), 0) for t in reads], dtype=float)


def router_usage(router: Router, inputs: RouterInputs, cost: CostModel, latency: LatencyModel,
                 seconds: float) -> dict[str, np.ndarray]:
    """What scoring cost per question: the SLM tokens a router that runs the SLM reads, priced as SLM input,
    modeled as SLM prefill and measured as the scoring call's `seconds` shared in proportion to those tokens.

    Routers that do not run the SLM (a question-text embedding, a vote over stored samples) cost 0.
    """
    n = len(inputs.questions)
    reads = router.slm_reads(inputs)
    if reads is None:
        return {"router_cost": np.zeros(n), "router_latency_s": np.zeros(n), "router_latency_model_s": np.zeros(n)}
    reads = np.asarray(reads, float)
    share = reads / reads.sum() if reads.sum() > 0 else np.full(n, 1.0 / max(n, 1))
    return {
        "router_cost": read_cost(reads, n, cost),
        "router_latency_s": seconds * share,
        "router_latency_model_s": latency.predict("slm", reads, np.zeros(n)),
    }


def build_records(router: Router, inputs: RouterInputs, llm_samples: pd.DataFrame, cost: CostModel,
                  latency: LatencyModel) -> pd.DataFrame:
    """The record contract of evaluation.metrics for one router on one split (one row per question)."""
    ids = inputs.questions["id"]
    answers = router.slm_answers(inputs).set_index("id").loc[ids]
    slm = usage(inputs.slm_samples, "slm", ids, router.uses_all_samples, cost, latency)
    llm = usage(llm_samples, "llm", ids, False, cost, latency)
    llm_correct = llm_samples[llm_samples["sample_idx"] == 0].set_index("id").loc[ids, "correct"]
    start = time.perf_counter()
    scores = np.asarray(router.score(inputs), float)
    scoring = router_usage(router, inputs, cost, latency, time.perf_counter() - start)
    return pd.DataFrame({
        "id": ids.to_numpy(),
        "score": np.clip(scores, -1e9, 1e9),
        "slm_correct": answers["correct"].to_numpy(bool),
        "llm_correct": llm_correct.to_numpy(bool),
        "slm_cost": slm["cost"].to_numpy(float),
        "llm_cost": llm["cost"].to_numpy(float),
        "router_cost": scoring["router_cost"],
        "slm_latency_s": slm["latency_s"].to_numpy(float),
        "llm_latency_s": llm["latency_s"].to_numpy(float),
        "slm_latency_model_s": slm["latency_model_s"].to_numpy(float),
        "llm_latency_model_s": llm["latency_model_s"].to_numpy(float),
        "router_latency_s": scoring["router_latency_s"],
        "router_latency_model_s": scoring["router_latency_model_s"],
        REFUSED_COLUMN: answers["refused"].to_numpy(bool),
    })
