"""The shipped profiles that bring real checkpoints: gpu's method sections, what CITER refuses of a pair before it
loads any weights, and the standin profile that stands in for gpu on a machine without its weights."""

from __future__ import annotations

import dataclasses
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


# What standin may change of gpu: where the models are, how big, and where and in what dtype they run.
# the profile's identity (its name, and so its own registered model), then its models' places, sizes and numerics
STANDIN_MAY_DIFFER = {"name", "tracking.registered_model",
                      *(f"models.{r}.{k}" for r in ("slm", "llm") for k in ("name", "source", "n_params", "dtype",
                                                                              "device"))}


def flat(value, prefix: str = "") -> dict:
    """A profile (or any part of one) as {dotted key: leaf value}."""
    if dataclasses.is_dataclass(value):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flat(item, f"{prefix}{key}.").items()}
    return {prefix[:-1]: value}


def test_standin_differs_from_gpu_only_in_model_paths_sizes_device_and_dtype() -> None:
    gpu, standin = flat(load_profile("gpu", root=ROOT)), flat(load_profile("standin", root=ROOT))
    assert gpu.keys() == standin.keys()
    assert {k for k in gpu if gpu[k] != standin[k]} <= STANDIN_MAY_DIFFER
    assert standin["models.slm.source"] == "artifacts/standin/models/slm" and standin["models.slm.device"] == "cpu"


@pytest.fixture(scope="module")
def standins(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from escalate.models.standin import build_standins

    out = tmp_path_factory.mktemp("standin")
    counts = build_standins(ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl", out)
    profile = load_profile("standin", root=ROOT)
    assert counts == {r: profile.models[r].n_params for r in ("slm", "llm")}  # the profile's sizes are the build's
    return out


def test_standins_are_qwen2_with_a_chatml_template_and_their_own_tokenizer(standins: Path,
                                                                            base_model: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    for role in ("slm", "llm"):
        config = AutoConfig.from_pretrained(standins / role)
        assert config.model_type == "qwen2" and config.head_dim == 64  # what vLLM's CPU kernels serve
    tokenizer = AutoTokenizer.from_pretrained(standins / "slm")
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], tokenize=False,
                                         add_generation_prompt=True)
    assert chat.endswith("<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.bos_token is None  # as Qwen's
    assert tokenizer.get_vocab() != AutoTokenizer.from_pretrained(base_model).get_vocab()  # not the zoo's
    assert tokenizer.get_vocab() == AutoTokenizer.from_pretrained(standins / "llm").get_vocab()  # CITER's pair


def test_the_gpu_profiles_lora_warmup_trains_a_standin(standins: Path, tmp_path: Path) -> None:
    """gpu's own warm-up config (LoRA r=16 on every projection, gradient checkpointing), a few steps on CPU."""
    import pandas as pd
    from transformers import AutoModelForCausalLM

    from escalate.corea.warmup import train_warmup

    cfg = replace(load_profile("gpu", root=ROOT).corea.warmup, steps=2, batch_size=2, gradient_accumulation=1,
                  warmup_steps=0, bf16=False)
    table = pd.DataFrame({"id": ["a", "b"], "prompt": ["Question: What is 2 + 3?\nAnswer:"] * 2,
                          "completion": [" 2 + 3 = 5. #### 5 Confidence: 0.9", " #### 5 Confidence: 0.5"],
                          "p_correct": [0.9, 0.5]})
    summary = train_warmup(standins / "slm", table, cfg, tmp_path / "warmup")
    assert summary["steps"] == 2
    assert not list((tmp_path / "warmup").glob("adapter_*"))
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "warmup")).__name__ == "Qwen2ForCausalLM"
