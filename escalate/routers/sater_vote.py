"""SATER's vote router (arXiv 2510.05164): a confidence-weighted vote over the SLM's K samples.

The strategy answers with the voted answer and pays for all K samples; it escalates when the
winning weighted share is below the threshold.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from escalate.routers.base import Router, RouterInputs
from escalate.routers.sater_refusal import refused


def weighted_vote(answers: list, weights: list[float]) -> tuple[object, float]:
    """The answer with the most weight and its share of all weight; None answers (refusals, blanks) count against.

    Ties go to the answer listed first, so the result does not depend on dict order.
    """
    total = sum(weights)
    tally: dict[object, float] = {}
    for answer, weight in zip(answers, weights):
        if answer is not None and answer == answer:  # NaN != NaN: a missing answer
            tally[answer] = tally.get(answer, 0.0) + weight
    if not tally or total <= 0:
        return None, 0.0
    answer = max(tally, key=tally.__getitem__)  # max keeps the first of equal keys
    return answer, tally[answer] / total


class SaterVoteRouter(Router):
    """Confidence-weighted vote over the K samples; the winning weighted share is the score.

    Each sample weighs its sequence probability exp(sum of token log-probs), so a sample the SLM
    was sure of outweighs a hesitant one; a refusal is a vote for no answer. Raw sequence
    probabilities favour short responses, as SATER's stage I does. Weights are scaled by the
    largest one before exponentiating: the shares are unchanged and long responses do not underflow.
    """

    name = "sater_vote"
    mode = "cascade"
    is_probability = True
    uses_all_samples = True

    def _votes(self, inputs: RouterInputs) -> pd.DataFrame:
        samples = inputs.slm_samples.assign(_refused=refused(inputs.slm_samples))
        rows = []
        for qid, g in samples.sort_values("sample_idx").groupby("id", sort=False):
            logps = np.array([float(np.sum(lps)) for lps in g["token_logprobs"]])
            top = logps.max()
            weights = (np.exp(logps - top) if np.isfinite(top) else np.zeros_like(logps)).tolist()
            answers = [None if r else a for a, r in zip(g["parsed_answer"], g["_refused"])]
            answer, share = weighted_vote(answers, weights)
            # The voted answer is correct exactly when it equals the answer of a correct sample.
            correct = bool(answer is not None and (g["correct"].astype(bool) & (g["parsed_answer"] == answer)).any())
            rows.append({"id": qid, "answer": answer, "share": share, "correct": correct})
        return pd.DataFrame(rows).set_index("id").loc[inputs.questions["id"]].reset_index()

    def score(self, inputs: RouterInputs) -> np.ndarray:
        return self._votes(inputs)["share"].to_numpy(dtype=float)

    def slm_answers(self, inputs: RouterInputs) -> pd.DataFrame:
        return self._votes(inputs)[["id", "answer", "correct"]]
