"""Per-query records: what each strategy's SLM and LLM parts cost, took and got right.

Everything METRICS.md reports is computed from these rows alone (STYLE.md 9), so sweeps and
reports can be recomputed offline from `records.parquet` without generating anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from escalate.evaluation.cost import CostModel
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


def build_records(router: Router, inputs: RouterInputs, llm_samples: pd.DataFrame, cost: CostModel,
                  latency: LatencyModel) -> pd.DataFrame:
    """The record contract of evaluation.metrics for one router on one split (one row per question)."""
    ids = inputs.questions["id"]
    answers = router.slm_answers(inputs).set_index("id").loc[ids]
    slm = usage(inputs.slm_samples, "slm", ids, router.uses_all_samples, cost, latency)
    llm = usage(llm_samples, "llm", ids, False, cost, latency)
    llm_correct = llm_samples[llm_samples["sample_idx"] == 0].set_index("id").loc[ids, "correct"]
    return pd.DataFrame({
        "id": ids.to_numpy(),
        "score": np.clip(np.asarray(router.score(inputs), float), -1e9, 1e9),
        "slm_correct": answers["correct"].to_numpy(bool),
        "llm_correct": llm_correct.to_numpy(bool),
        "slm_cost": slm["cost"].to_numpy(float),
        "llm_cost": llm["cost"].to_numpy(float),
        "router_cost": 0.0,
        "slm_latency_s": slm["latency_s"].to_numpy(float),
        "llm_latency_s": llm["latency_s"].to_numpy(float),
        "slm_latency_model_s": slm["latency_model_s"].to_numpy(float),
        "llm_latency_model_s": llm["latency_model_s"].to_numpy(float),
    })
