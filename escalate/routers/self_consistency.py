"""Self-consistency: vote over the SLM's K samples; the winning share is the confidence.

The strategy answers with the majority answer and pays for all K samples.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from escalate.routers.base import Router, RouterInputs, majority


class SelfConsistencyRouter(Router):
    name = "self_consistency"
    mode = "cascade"
    is_probability = True
    uses_all_samples = True

    def _votes(self, inputs: RouterInputs) -> pd.DataFrame:
        grouped = inputs.slm_samples.sort_values("sample_idx").groupby("id", sort=False)
        rows = []
        for qid, g in grouped:
            answer, share = majority(list(g["parsed_answer"]))
            # The voted answer is correct exactly when it equals the answer of a correct sample.
            correct = bool(answer is not None and (g["correct"] & (g["parsed_answer"] == answer)).any())
            rows.append({"id": qid, "answer": answer, "share": share, "correct": correct})
        return pd.DataFrame(rows).set_index("id").loc[inputs.questions["id"]].reset_index()

    def score(self, inputs: RouterInputs) -> np.ndarray:
        return self._votes(inputs)["share"].to_numpy(dtype=float)

    def slm_answers(self, inputs: RouterInputs) -> pd.DataFrame:
        return self._votes(inputs)[["id", "answer", "correct"]]
