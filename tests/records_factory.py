"""Hand-computed strategy records shared by the metrics and curves tests."""

import pandas as pd


def records() -> pd.DataFrame:
    """Four queries: SLM-only accuracy 0.5, LLM-only 0.75; Σ llm_cost = 50, Σ slm_cost = 5.

    Escalating at threshold 0.25 sends a and b to the LLM.
    """
    return pd.DataFrame(
        {
            "id": ["a", "b", "c", "d"],
            "score": [0.1, 0.2, 0.3, 0.4],
            "slm_correct": [False, False, True, True],
            "llm_correct": [True, False, True, True],
            "slm_cost": [1.0, 1.0, 2.0, 1.0],
            "llm_cost": [10.0, 10.0, 20.0, 10.0],
            "router_cost": [0.5, 0.5, 0.5, 0.5],
            "slm_latency_s": [1.0, 2.0, 1.0, 3.0],
            "llm_latency_s": [5.0, 6.0, 5.0, 7.0],
            "slm_latency_model_s": [0.4, 0.8, 0.4, 1.2],
            "llm_latency_model_s": [2.0, 2.4, 2.0, 2.8],
            "router_latency_s": [0.0, 0.0, 0.0, 0.0],
            "router_latency_model_s": [0.0, 0.0, 0.0, 0.0],
        }
    )
