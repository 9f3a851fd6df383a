"""The in-process Hugging Face backend on a real (random) Llama checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from escalate.config import ArchConfig, ArithConfig
from escalate.models import zoo
from escalate.models.backends import BackendError, SamplingParams
from escalate.models.backends.hf import HFBackend


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt")
    pairs = zoo.corpus(ArithConfig(max_operand=9), 100, 1, set())
    tok = zoo.train_tokenizer((p + c for p, c in pairs), 300)
    zoo.build_model(ArchConfig(64, 1, 1, 64, 64), tok, 0).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_generations_carry_consistent_fields(checkpoint: Path) -> None:
    backend = HFBackend(str(checkpoint), batch_size=3)
    out = backend.generate(["Question: Ann has 3 cups.\nAnswer:"] * 4, SamplingParams(max_new_tokens=8, n=2,
                                                                                      temperature=1.0))
    assert [len(g) for g in out] == [2, 2, 2, 2]
    for gen in (g for gens in out for g in gens):
        assert 1 <= gen.n_output_tokens <= 8
        assert len(gen.token_logprobs) == len(gen.token_entropies) == len(gen.token_offsets) == gen.n_output_tokens
        assert all(lp <= 0 and not math.isnan(lp) for lp in gen.token_logprobs)
        assert all(e >= 0 for e in gen.token_entropies)
        assert gen.n_prompt_tokens > 5 and gen.latency_s > 0


def test_greedy_is_deterministic_and_offsets_locate_tokens(checkpoint: Path) -> None:
    backend = HFBackend(str(checkpoint))
    params = SamplingParams(max_new_tokens=10)
    a = backend.generate(["Question: Ben has 5 pens.\nAnswer:"], params)[0][0]
    b = backend.generate(["Question: Ben has 5 pens.\nAnswer:"], params)[0][0]
    assert a.text == b.text and a.token_logprobs == pytest.approx(b.token_logprobs)
    assert a.token_offsets == sorted(a.token_offsets) and a.token_offsets[0] == 0


def test_missing_checkpoint_is_a_clear_backend_error(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="cannot load model"):
        HFBackend(str(tmp_path / "nope"))
