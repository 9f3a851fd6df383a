"""Generation with offline vLLM (`vllm.LLM`) inside this process, where vLLM is installed.

vLLM lives in its own environment (`.venv-serve`, built by `make setup-serve`), so it is imported
only when a VLLMBackend is built. The conversion of vLLM's outputs into Generations is kept in pure
functions over the fields vLLM documents (RequestOutput.prompt_token_ids and .outputs;
CompletionOutput.text, .token_ids, .logprobs, .finish_reason; Logprob.logprob), so it is tested
without vLLM.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Mapping
from typing import Any

from escalate.models.backends.base import (
    BackendError,
    Generation,
    GenerationBackend,
    SamplingParams,
    entropy_from_logprobs,
    offsets_from_pieces,
)


def step_entropy(step: Mapping[int, Any], k: int) -> float:
    """Entropy over the k most likely alternatives of one step.

    vLLM adds the sampled token to a step's logprobs when it is outside the top k; keeping the k
    largest makes the entropy mean the same whatever was sampled.
    """
    return entropy_from_logprobs(sorted((lp.logprob for lp in step.values()), reverse=True)[:k])


def completion_to_generation(
    completion: Any, n_prompt_tokens: int, top_logprobs: int, latency_s: float
) -> Generation:
    """One vLLM CompletionOutput as a Generation; each step's logprobs hold the sampled token."""
    token_ids = [int(t) for t in completion.token_ids]
    steps = list(completion.logprobs or [])
    if len(steps) != len(token_ids):
        raise BackendError(
            f"vLLM returned {len(steps)} logprob steps for {len(token_ids)} tokens; "
            "was SamplingParams.logprobs set?"
        )
    return Generation(
        text=completion.text,
        token_ids=token_ids,
        token_logprobs=[float(step[t].logprob) for t, step in zip(token_ids, steps)],
        token_entropies=[step_entropy(step, top_logprobs) for step in steps],
        token_offsets=offsets_from_pieces([step[t].decoded_token or "" for t, step in zip(token_ids, steps)]),
        n_prompt_tokens=n_prompt_tokens,
        latency_s=latency_s,
        finish_reason=completion.finish_reason or "stop",
    )


def request_to_generations(request_output: Any, top_logprobs: int, latency_s: float) -> list[Generation]:
    """The n generations of one vLLM RequestOutput, in vLLM's order."""
    n_prompt_tokens = len(request_output.prompt_token_ids or [])
    return [
        completion_to_generation(c, n_prompt_tokens, top_logprobs, latency_s) for c in request_output.outputs
    ]


def import_vllm() -> Any:
    """vLLM, or a BackendError saying where to get it."""
    try:
        import vllm  # optional: installed only in the serving environment or on a GPU machine
    except ImportError as exc:
        raise BackendError(
            f"vLLM is not installed in this environment ({exc}). `make setup-serve` builds .venv-serve "
            "with vLLM; run there, or use the `hf` backend."
        ) from None
    return vllm


class VLLMBackend(GenerationBackend):
    """Batches all prompts into one `LLM.generate` call, which vLLM schedules as it sees fit.

    vLLM reports no per-request timing for a batch, so latency_s of each generation is the batch's
    wall time divided evenly across its prompts: right on average for cost, not per prompt.
    Logprobs are vLLM's default raw logprobs (before temperature), as Generation requires.
    """

    name = "vllm"

    def __init__(
        self,
        model_path: str,
        dtype: str = "auto",
        seed: int = 0,
        top_logprobs: int = 5,
        gpu_memory_utilization: float = 0.8,
        **llm_kwargs: Any,
    ) -> None:
        if top_logprobs < 1:
            raise ValueError(f"top_logprobs must be >= 1 (entropy needs alternatives), got {top_logprobs}")
        self._vllm = import_vllm()
        self.model_path = model_path
        self.top_logprobs = top_logprobs
        try:
            self._llm = self._vllm.LLM(
                model=model_path,
                dtype=dtype,
                seed=seed,
                gpu_memory_utilization=gpu_memory_utilization,
                **llm_kwargs,
            )
        except Exception as exc:  # vLLM raises many types while loading; name the model in one error
            raise BackendError(f"vLLM could not load {model_path!r}: {type(exc).__name__}: {exc}") from exc

    def sampling_params(self, params: SamplingParams) -> Any:
        """Our SamplingParams as vLLM's."""
        return self._vllm.SamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            seed=params.seed,
            stop=list(params.stop) or None,
            logprobs=self.top_logprobs,
        )

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Generation]]:
        if not prompts:
            return []
        start = time.perf_counter()
        outputs = self._llm.generate(prompts, self.sampling_params(params), use_tqdm=False)
        latency_s = (time.perf_counter() - start) / len(prompts)
        return [request_to_generations(o, self.top_logprobs, latency_s) for o in outputs]

    def close(self) -> None:
        """vLLM has no public shutdown; its engine and memory go when the LLM is collected."""
        self._llm = None
        gc.collect()
