"""SATER's pre-generation router (arXiv 2510.05164): the probability that the SATER-trained SLM's response
starts with its refusal decides, before any answer is generated.

Stage II teaches the SLM to answer with a fixed refusal where its sampled accuracy is low, so the
probability it gives that refusal, read off one prefill of the prompt followed by the refusal's
tokens (teacher-forced: nothing is generated), says how unsure it is. Score = 1 − P(refusal):
below the threshold the query goes to the LLM and the SLM has spent only that prefill, which is
priced and timed as SLM input (`slm_reads`); above it the SLM answers. A threshold sweep trades
refusals for answers, where the greedy response alone (escalate.sater.routers.refusal) refuses or not.

The router needs the stage-II checkpoint (`model_dir`; a bundle re-points it at its own copy with
`bind_slm`). Each distinct prompt is read once (escalate.routers.memo). A kept query whose answer is the
refusal after all still escalates (data.schema.is_refusal), as for every strategy.
Run by name, like every router: `evaluation.strategies: [sater_pregen]` or `escalate sater train`.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from escalate.routers.base import Router, RouterInputs
from escalate.routers.memo import TextMemo
from escalate.routers.pik_probe import prompts_of
from escalate.sater.preferences import REFUSAL_COMPLETION


class RefusalProbability:
    """Prompt -> P(the SLM's response starts with REFUSAL_COMPLETION), from one batched prefill per new prompt."""

    def __init__(self, model_dir: str, device: str = "auto", batch_size: int = 32) -> None:
        from escalate.models.backends.hf import shared_backend  # torch: only when the router runs

        self.backend = shared_backend(model_dir, device)
        self.refusal = self.backend.tokenizer(REFUSAL_COMPLETION, add_special_tokens=False)["input_ids"]
        self._memo = TextMemo(self._forward, batch_size)

    def prompt_tokens(self, prompts: list[str]) -> np.ndarray:
        return np.array([len(self.backend.encode_prompt(p)) for p in prompts], dtype=float)

    def __call__(self, prompts: list[str]) -> np.ndarray:
        return np.array(self._memo(prompts), dtype=float)

    def _forward(self, prompts: list[str]) -> list[float]:
        import torch  # loaded already: shared_backend (in __init__) brought it

        from escalate.models.backends.hf import left_padded  # torch, as above

        encoded = [self.backend.encode_prompt(p) + self.refusal for p in prompts]
        ids, mask, positions = left_padded(encoded, self.backend.tokenizer.pad_token_id, self.backend.device)
        with torch.inference_mode():
            logits = self.backend.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        n = len(self.refusal)
        # The last n tokens are the refusal's; the logits one position earlier predict each of them.
        logprobs = logits[:, -n - 1 : -1].float().log_softmax(-1)
        picked = logprobs.gather(-1, ids[:, -n:].unsqueeze(-1)).squeeze(-1)
        return picked.sum(-1).exp().tolist()


class SaterPregenRouter(Router):
    """Score = 1 − P(the SATER SLM's response starts with the refusal); decided before generating."""

    name = "sater_pregen"
    mode = "pregen"
    is_probability = False  # one minus a refusal probability, not a calibrated P(SLM correct)

    def __init__(self, model_dir: str, device: str = "auto") -> None:
        self.model_dir = model_dir
        self.device = device

    def bind_slm(self, checkpoint: str) -> None:
        self.model_dir = checkpoint

    def _reader(self) -> RefusalProbability:
        return refusal_probability(self.model_dir, self.device)

    def fit(self, calib: RouterInputs) -> SaterPregenRouter:
        """Nothing to learn; the checkpoint loads now, so that scoring is timed without the load."""
        self._reader()
        return self

    def score(self, inputs: RouterInputs) -> np.ndarray:
        return 1.0 - self._reader()(prompts_of(inputs))

    def slm_reads(self, inputs: RouterInputs) -> np.ndarray:
        """The prompt and the refusal's tokens: the prefill that scores a query."""
        reader = self._reader()
        return reader.prompt_tokens(prompts_of(inputs)) + len(reader.refusal)


@cache
def refusal_probability(model_dir: str, device: str = "auto") -> RefusalProbability:
    """The process-wide reader of one checkpoint (a saved router holds the path, not the weights)."""
    return RefusalProbability(model_dir, device)
