"""Self-consistency: vote over the SLM's K samples; the winning share is the confidence.

The strategy answers with the majority answer and pays for all K samples.
"""

from __future__ import annotations

from escalate.routers.base import VotingRouter, majority


class SelfConsistencyRouter(VotingRouter):
    name = "self_consistency"
    mode = "cascade"
    is_probability = True
    top_logprobs_needed = 0  # the parsed answers only

    def vote(self, samples: list[dict]) -> tuple[object, float]:
        return majority([s["parsed_answer"] for s in samples])
