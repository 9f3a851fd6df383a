"""VLLMBackend's conversion and wiring, with stand-ins shaped like vLLM's outputs (vLLM is not installed here)."""

from __future__ import annotations

import math
import sys
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from escalate.models.backends.base import BackendError, SamplingParams
from escalate.models.backends.vllm_offline import (
    VLLMBackend,
    completion_to_generation,
    request_to_generations,
)


def lp(p: float, rank: int) -> SimpleNamespace:
    """A stand-in for vllm.logprobs.Logprob."""
    return SimpleNamespace(logprob=math.log(p), rank=rank, decoded_token=None)


def completion(text: str = "ab") -> SimpleNamespace:
    """A CompletionOutput for top_logprobs=2: step 2 sampled token 9, outside the top 2, so vLLM adds it."""
    return SimpleNamespace(
        index=0,
        text=text,
        token_ids=[5, 9],
        cumulative_logprob=math.log(0.6 * 0.1),
        logprobs=[
            {5: lp(0.6, 1), 6: lp(0.3, 2)},
            {7: lp(0.5, 1), 8: lp(0.3, 2), 9: lp(0.1, 4)},
        ],
        finish_reason="length",
    )


def request_output(n: int = 1, prompt_len: int = 4) -> SimpleNamespace:
    return SimpleNamespace(
        prompt_token_ids=list(range(prompt_len)), outputs=[completion(f"c{i}") for i in range(n)]
    )


def test_completion_converts_ids_chosen_logprobs_and_top_k_entropy() -> None:
    g = completion_to_generation(completion(), n_prompt_tokens=4, top_logprobs=2, latency_s=0.25)
    assert g.text == "ab"
    assert g.token_ids == [5, 9] and g.n_output_tokens == 2
    # The chosen token's logprob even when it is not the most likely one.
    assert g.token_logprobs == pytest.approx([math.log(0.6), math.log(0.1)])

    # Entropy over the top 2 renormalised: (2/3, 1/3) then (5/8, 3/8); the added sampled token is left out.
    def h(*ps: float) -> float:
        return -sum(p * math.log(p) for p in ps)

    assert g.token_entropies == pytest.approx([h(2 / 3, 1 / 3), h(5 / 8, 3 / 8)])
    assert (g.n_prompt_tokens, g.latency_s, g.finish_reason) == (4, 0.25, "length")


def test_missing_logprobs_is_a_backend_error() -> None:
    bare = SimpleNamespace(**{**vars(completion()), "logprobs": None})
    with pytest.raises(BackendError, match="0 logprob steps for 2 tokens"):
        completion_to_generation(bare, 4, 2, 0.0)


def test_request_output_gives_n_generations_with_prompt_tokens() -> None:
    gens = request_to_generations(request_output(n=3, prompt_len=7), top_logprobs=2, latency_s=0.1)
    assert [g.text for g in gens] == ["c0", "c1", "c2"]
    assert all(g.n_prompt_tokens == 7 for g in gens)


def test_constructing_without_vllm_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail even where it is installed
    with pytest.raises(BackendError) as err:
        VLLMBackend("models/tiny")
    assert "vLLM is not installed" in str(err.value)
    assert "make setup-serve" in str(err.value) and "`hf` backend" in str(err.value)


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """A stand-in `vllm` module whose LLM records its arguments and answers with stand-in outputs."""
    calls = SimpleNamespace(llm_kwargs=None, generate_args=None)

    class LLM:
        def __init__(self, **kwargs: Any) -> None:
            if kwargs["model"] == "missing":
                raise OSError("no config.json")
            calls.llm_kwargs = kwargs

        def generate(self, prompts: list[str], sampling_params: Any, use_tqdm: bool) -> list[SimpleNamespace]:
            calls.generate_args = (prompts, sampling_params, use_tqdm)
            return [request_output(n=sampling_params.kwargs["n"], prompt_len=len(p)) for p in prompts]

    module = ModuleType("vllm")
    module.LLM = LLM  # type: ignore[attr-defined]
    module.SamplingParams = lambda **kwargs: SimpleNamespace(kwargs=kwargs)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", module)
    return calls


def test_backend_maps_params_and_splits_batch_latency(fake_vllm: SimpleNamespace) -> None:
    backend = VLLMBackend("models/tiny", dtype="float32", seed=3, top_logprobs=2, enforce_eager=True)
    assert fake_vllm.llm_kwargs == {
        "model": "models/tiny",
        "dtype": "float32",
        "seed": 3,
        "gpu_memory_utilization": 0.8,
        "enforce_eager": True,
    }
    params = SamplingParams(max_new_tokens=8, temperature=0.5, top_p=0.9, n=2, seed=11, stop=("\n",))
    out = backend.generate(["abc", "defgh"], params)

    prompts, sampling, use_tqdm = fake_vllm.generate_args
    assert prompts == ["abc", "defgh"] and use_tqdm is False
    assert sampling.kwargs == {
        "n": 2,
        "temperature": 0.5,
        "top_p": 0.9,
        "max_tokens": 8,
        "seed": 11,
        "stop": ["\n"],
        "logprobs": 2,
    }
    assert [len(gens) for gens in out] == [2, 2]
    assert [gens[0].n_prompt_tokens for gens in out] == [3, 5]
    latencies = {g.latency_s for gens in out for g in gens}
    assert len(latencies) == 1 and latencies.pop() > 0
    assert backend.generate([], params) == []
    backend.close()


def test_load_failure_names_the_model(fake_vllm: SimpleNamespace) -> None:
    with pytest.raises(BackendError, match="vLLM could not load 'missing': OSError: no config.json"):
        VLLMBackend("missing")
