"""SATER's pre-generation router: 1 − P(the response starts with the refusal), from one prefill, priced as
SLM input tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from escalate.routers.base import RouterInputs
from escalate.routers.registry import make_router
from escalate.sater.preferences import REFUSAL_COMPLETION
from escalate.sater.routers.pregen import RefusalProbability


def inputs(questions: list[str]) -> RouterInputs:
    frame = pd.DataFrame({"id": [f"q{i}" for i in range(len(questions))], "question": questions, "split": "test",
                          "choices": None})
    return RouterInputs(frame, pd.DataFrame())


def direct_probability(reader: RefusalProbability, prompt: str) -> float:
    """P(refusal | prompt) by the chain rule, one unpadded forward pass, no batching."""
    ids = reader.backend.encode_prompt(prompt)
    full = torch.tensor([ids + reader.refusal])
    with torch.inference_mode():
        logprobs = reader.backend.model(input_ids=full).logits[0].float().log_softmax(-1)
    n = len(ids)
    return float(np.exp(sum(logprobs[n - 1 + i, t].item() for i, t in enumerate(reader.refusal))))


def test_scores_are_one_minus_the_chain_rule_refusal_probability(base_model: Path) -> None:
    router = make_router("sater_pregen", model_dir=str(base_model))
    questions = ["Ann has 2 cups. How many cups does Ann have now?",
                 "Ben has 5 pens. Then gets 3 more. Then gives away 1. How many pens does Ben have now?"]
    scores = router.score(inputs(questions))  # batched: the short prompt is left-padded
    reader = RefusalProbability(str(base_model))
    expected = [1 - direct_probability(reader, f"Question: {q}\nAnswer:") for q in questions]
    assert scores == pytest.approx(expected, rel=1e-4, abs=1e-7)
    assert ((scores >= 0) & (scores <= 1)).all()


def test_it_reads_the_prompt_and_the_refusal_and_decides_before_generating(base_model: Path) -> None:
    router = make_router("sater_pregen", model_dir=str(base_model))
    assert router.mode == "pregen" and not router.is_probability
    reader = RefusalProbability(str(base_model))
    question = "Ann has 2 cups. How many cups does Ann have now?"
    n_prompt = len(reader.backend.encode_prompt(f"Question: {question}\nAnswer:"))
    assert reader.refusal == reader.backend.tokenizer(REFUSAL_COMPLETION, add_special_tokens=False)["input_ids"]
    assert list(router.slm_reads(inputs([question]))) == [n_prompt + len(reader.refusal)]


def test_a_bundle_re_points_it_at_its_own_copy_of_the_slm(base_model: Path) -> None:
    router = make_router("sater_pregen", model_dir="/where/it/was/fitted")
    router.bind_slm(str(base_model))
    assert router.model_dir == str(base_model) and len(router.score(inputs(["Ann has 2 cups. How many?"]))) == 1
