"""CITER decoded concurrently: sequences that join a batch mid-flight, and the server's batcher, answer
exactly as each sequence decoded alone (tokens, sources, costs)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from escalate.citer.decode import TokenLevelDecoder, TokenLevelGeneration
from escalate.citer.router import TokenRouter
from escalate.serving.batcher import BatcherClosed, DecodeBatcher
from tests.test_citer import random_llama, word_tokenizer

# Lengths 1 to 12: a one-token prompt joins as all padding but its last column, a 12-token one widens the batch.
CONTEXTS = [[1, 4, 5, 6], [1, 7, 8], [1, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17], [1], [1, 14, 15],
            [1, 9, 8, 7, 6], [1, 20, 21], [1, 4]]
BUDGETS = [9, 6, 8, 12, 3, 10, 7, 5]


@pytest.fixture(scope="module")
def decoder() -> TokenLevelDecoder:
    """Random Llamas and a random router, τ at the median score: both models write (tests assert so)."""
    tokenizer = word_tokenizer()
    slm, llm = random_llama(len(tokenizer), 32, 1, 0), random_llama(len(tokenizer), 64, 2, 1)
    torch.manual_seed(3)
    router = TokenRouter(32, [8]).eval()
    alone = TokenLevelDecoder(slm, llm, tokenizer, router, 1.0).generate_ids(CONTEXTS, BUDGETS)
    tau = float(np.median([s for g in alone for s in g.llm_scores]))
    return TokenLevelDecoder(slm, llm, tokenizer, router, tau)


@pytest.fixture(scope="module")
def alone(decoder: TokenLevelDecoder) -> list[TokenLevelGeneration]:
    """Each context decoded by itself: the reference every concurrent decode must match."""
    return [decoder.generate_ids([c], b)[0] for c, b in zip(CONTEXTS, BUDGETS)]


def assert_same(got: TokenLevelGeneration, want: TokenLevelGeneration) -> None:
    assert (got.token_ids, got.sources, got.text, got.finish_reason) == (want.token_ids, want.sources, want.text,
                                                                       want.finish_reason)
    assert (got.bytes_moved, got.flops, got.llm_passes, got.n_prompt_tokens) == (want.bytes_moved, want.flops,
                                                                                 want.llm_passes, want.n_prompt_tokens)
    np.testing.assert_allclose(got.llm_scores, want.llm_scores, rtol=1e-4, atol=1e-6)


def test_the_reference_mixes_both_models(alone) -> None:
    sources = [set(g.sources) for g in alone]
    assert {"slm", "llm"} in sources  # a mixed answer: the LLM caught up mid-answer
    assert any(g.finish_reason == "length" for g in alone) and all(len(g.token_ids) >= 2 for g in alone[:3])


def test_sequences_joining_mid_flight_decode_as_alone(decoder, alone) -> None:
    """Rows join at different steps: into a running batch whose LLM cache holds columns (prefilled for the new
    rows), with a longer prompt than any in flight (the batch widens), after rows left (leading columns trimmed)."""
    batch = decoder.batch()
    done: dict[int, TokenLevelGeneration] = {}
    joins = {0: [0, 1], 2: [2], 3: [3, 4], 6: [5], 11: [6, 7]}  # step -> contexts that join before it
    llm_held_at_join, widths = [], []
    step = 0
    while batch or step <= max(joins):
        if step in joins:
            llm_held_at_join.append(batch.seen["llm"])
            batch.admit([CONTEXTS[i] for i in joins[step]], [BUDGETS[i] for i in joins[step]], joins[step])
            widths.append(batch.seq.shape[1])
        if batch:
            done.update(batch.step())
        step += 1
    assert sorted(done) == list(range(len(CONTEXTS)))
    for i, gen in done.items():
        assert_same(gen, alone[i])
    assert any(llm_held_at_join[1:])  # some rows joined while the LLM's cache held columns
    assert widths[1] >= len(CONTEXTS[2]) and widths[-1] < max(widths)  # widened for the long prompt, trimmed later


def test_a_batch_started_together_is_generate_ids(decoder, alone) -> None:
    together = decoder.generate_ids(CONTEXTS, BUDGETS)
    for got, want in zip(together, alone):
        assert_same(got, want)


def test_concurrent_requests_through_the_batcher_answer_as_alone(decoder, alone) -> None:
    batcher = DecodeBatcher(decoder, max_new_tokens=12, max_batch=3)  # fewer rows than clients: some wait
    try:
        start = threading.Barrier(len(CONTEXTS))

        def client(i: int) -> TokenLevelGeneration:
            start.wait()
            return batcher.submit(CONTEXTS[i], BUDGETS[i]).result(timeout=120)

        with ThreadPoolExecutor(len(CONTEXTS)) as pool:
            gens = list(pool.map(client, range(len(CONTEXTS))))
        for got, want in zip(gens, alone):
            assert_same(got, want)
            assert got.latency_s >= sum(got.seconds.values()) > 0  # its own wall time, each role's passes within it
        prompts = ["Ann has cups . How many ?", "The answer is"]
        assert [g.token_ids for g in batcher.generate(prompts)] == [g.token_ids for g in decoder.generate(prompts, 12)]
    finally:
        batcher.close()
    with pytest.raises(BatcherClosed):
        batcher.submit([1, 4], 3)


class Exploding(torch.nn.Module):
    """A router that fails on its second call: every request in flight then fails, and the batcher goes on."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.full((hidden.shape[0],), float("nan") if self.calls == 2 else -5.0)


def test_a_failed_step_fails_its_requests_and_the_batcher_serves_the_next(decoder) -> None:
    models = decoder.models
    exploding = TokenLevelDecoder(models["slm"], models["llm"], decoder.tokenizer, Exploding(), 0.5)
    batcher = DecodeBatcher(exploding, max_new_tokens=4, max_batch=4)
    try:
        with pytest.raises(ValueError, match="non-finite"):
            batcher.submit([1, 4, 5], 4).result(timeout=60)
        assert len(batcher.submit([1, 4, 5], 4).result(timeout=60).token_ids) >= 1
    finally:
        batcher.close()


def test_closing_fails_the_requests_still_waiting(decoder) -> None:
    batcher = DecodeBatcher(decoder, max_new_tokens=12, max_batch=1)
    futures = [batcher.submit(c, 12) for c in CONTEXTS]
    batcher.close()
    outcomes = [f.exception() for f in futures]
    assert all(e is None or isinstance(e, BatcherClosed) for e in outcomes) and isinstance(outcomes[-1], BatcherClosed)
