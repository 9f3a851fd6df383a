"""The shipped profiles that bring real checkpoints: gpu's method sections, what CITER refuses of a pair before it
loads any weights, and the standin profile that stands in for gpu on a machine without its weights."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from escalate.cli import main
from escalate.config import ConfigError, ModelConfig, load_profile
from escalate.train.config import PROJECTIONS

ROOT = Path(__file__).resolve().parents[1]


def loops(profile):
    """Every training loop config of a profile's method sections, by dotted key."""
    return {"sater.dpo": profile.sater.dpo, "sater.refusal": profile.sater.refusal,
            "corea.warmup": profile.corea.warmup, "corea.grpo": profile.corea.grpo}


def test_gpu_trains_every_method_with_lora_bf16_and_gradient_checkpointing() -> None:
    gpu = load_profile("gpu", root=ROOT)
    assert gpu.sater is not None and gpu.corea is not None and gpu.citer is not None
    for key, cfg in loops(gpu).items():
        assert cfg.lora is not None and cfg.lora.r == 16 and cfg.lora.target_modules == PROJECTIONS, key
        assert cfg.bf16 and cfg.gradient_checkpointing, key
        assert cfg.max_length >= 512, key  # a worked GSM8K answer
    assert gpu.corea.grpo.use_vllm
    assert gpu.citer.reference_key == "solution"  # the gsm8k adapter's meta key


def test_citer_refuses_gpus_api_only_llm_saying_how_to_run_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["citer", "train", "--profile", "gpu", "--root", str(ROOT)]) == 2
    err = capsys.readouterr().err
    assert "models.llm.backend" in err and "API-only" in err and "'openai'" in err
    assert "Self-host it" in err and "query-level strategies" in err


def tokenizer_only(path: Path, vocab_size: int) -> Path:
    """A directory with a zoo tokenizer's files and no weights: CITER must judge the pair from these alone."""
    from escalate.config import ArithConfig
    from escalate.models import zoo

    pairs = zoo.corpus(ArithConfig(max_operand=9), 200, seed=1, exclude=set())
    zoo.train_tokenizer((p + c for p, c in pairs), vocab_size=vocab_size).save_pretrained(path)
    return path


def test_citer_refuses_a_pair_whose_tokenizers_differ_before_loading_weights(tmp_path: Path) -> None:
    from escalate.citer.train import check_pair

    smoke = load_profile("smoke", root=ROOT)
    models = {"slm": ModelConfig(name="small", source=str(tokenizer_only(tmp_path / "s", 300))),
              "llm": ModelConfig(name="large", source=str(tokenizer_only(tmp_path / "l", 290)))}
    with pytest.raises(ConfigError, match="CITER routes token by token: SLM and LLM must share a tokenizer; "
                                          "small has 300 tokens, large 290"):
        check_pair(replace(smoke, models=models), tmp_path)
    same = {**models, "llm": replace(models["llm"], source=models["slm"].source)}
    check_pair(replace(smoke, models=same), tmp_path)  # one tokenizer: no complaint, and still no weights read
    with pytest.raises(ConfigError, match="models.slm.backend: CITER decodes both models in process and needs 'hf'"):
        check_pair(replace(smoke, models={**same, "slm": replace(same["slm"], backend="vllm")}), tmp_path)


def test_grpo_with_vllm_where_vllm_is_missing_says_so_before_loading(base_model: Path, tmp_path: Path) -> None:
    from trl.import_utils import is_vllm_available

    from escalate.corea.grpo import train_grpo
    from tests.test_corea_train import QUESTIONS

    if is_vllm_available():
        pytest.skip("vllm is installed beside TRL here")
    cfg = replace(load_profile("smoke", root=ROOT).corea.grpo, use_vllm=True)
    with pytest.raises(ConfigError, match="corea.grpo.use_vllm: .* vllm is not installed"):
        train_grpo(base_model, QUESTIONS, cfg, tmp_path / "grpo")
