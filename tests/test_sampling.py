"""Sampling: K graded rows per question, log P(T) on the answer tokens, a valid samples table."""

from __future__ import annotations

import math

import pandas as pd

from escalate.config import SamplingConfig
from escalate.data.validation import validate
from escalate.models.backends.base import Generation, GenerationBackend, SamplingParams
from escalate.sampling import answer_logprob, sample


def _gen(pieces: list[str], lps: list[float]) -> Generation:
    offsets, pos = [], 0
    for p in pieces:
        offsets.append(pos)
        pos += len(p)
    return Generation(text="".join(pieces), token_ids=list(range(len(pieces))), token_logprobs=lps,
                      token_entropies=[0.1] * len(pieces), token_offsets=offsets, n_prompt_tokens=7, latency_s=0.01)


def test_answer_logprob_sums_only_the_answer_tokens() -> None:
    gen = _gen([" 3", " +", " 4", " =", " 7", ".", " The", " answer", " is", " 4", "2", "."],
               [-0.1, -0.1, -0.1, -0.1, -0.1, -0.1, -0.1, -0.1, -0.1, -0.5, -0.25, -0.1])
    assert answer_logprob(gen, "numeric") == -0.75
    assert answer_logprob(_gen([" no", " idea"], [-1.0, -1.0]), "numeric") is None


class ScriptedBackend(GenerationBackend):
    """Answers every prompt with '... The answer is 4.' greedily and '5' when sampling."""

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Generation]]:
        digit = "4" if params.temperature == 0 else "5"
        return [[_gen([" The", " answer", " is", f" {digit}", "."], [-0.2] * 5) for _ in range(params.n)]
                for _ in prompts]


def test_sample_writes_k_graded_rows_per_question() -> None:
    questions = pd.DataFrame({"id": ["q1", "q2"], "task": "arith", "question": ["a?", "b?"], "answer": ["4", "5"],
                              "split": "test", "difficulty": [1, 2], "choices": None, "meta": None})
    out = sample(ScriptedBackend(), questions, "slm", SamplingConfig(k=3, max_new_tokens=8), seed=0)
    assert len(out) == 6 and sorted(out["sample_idx"].unique()) == [0, 1, 2]
    greedy = out[out["sample_idx"] == 0].set_index("id")
    assert greedy.loc["q1", "correct"] and not greedy.loc["q2", "correct"]
    assert math.isclose(greedy.loc["q1", "answer_logprob"], -0.2)
    assert validate(out, "samples", model_ids=["slm", "llm"]).ok
