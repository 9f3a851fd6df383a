"""SATER's vote router (arXiv 2510.05164): a confidence-weighted vote over the SLM's K samples.

The strategy answers with the voted answer and pays for all K samples; it escalates when the
winning weighted share is below the threshold.
Run by name, like every router: `evaluation.strategies: [sater_vote]` or `escalate sater train`.
"""

from __future__ import annotations

import numpy as np

from escalate.routers.base import VotingRouter, refused_row


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


class SaterVoteRouter(VotingRouter):
    """Confidence-weighted vote over the K samples; the winning weighted share is the score.

    Each sample weighs its sequence probability exp(sum of token log-probs), so a sample the SLM
    was sure of outweighs a hesitant one; a refusal is a vote for no answer. Raw sequence
    probabilities favour short responses, as SATER's stage I does. Weights are scaled by the
    largest one before exponentiating: the shares are unchanged and long responses do not underflow.
    """

    name = "sater_vote"
    mode = "cascade"
    is_probability = True

    def vote(self, samples: list[dict]) -> tuple[object, float]:
        logps = np.array([float(np.sum(s["token_logprobs"])) for s in samples])
        top = logps.max()
        weights = (np.exp(logps - top) if np.isfinite(top) else np.zeros_like(logps)).tolist()
        answers = [None if refused_row(s) else s["parsed_answer"] for s in samples]
        return weighted_vote(answers, weights)
