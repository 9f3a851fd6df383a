"""The memory estimator against figures worked by hand for a small shape, and its table for the gpu profile."""

from __future__ import annotations

from pathlib import Path

from escalate.config import load_profile
from escalate.memory import FULL_BYTES_PER_PARAM, QWEN, Shape, estimate, stage_estimates, table

ROOT = Path(__file__).resolve().parents[1]
# 2 blocks of width 64 (one 64-wide head), MLP 128, vocabulary 100, tied embeddings.
SMALL = Shape("small", hidden=64, layers=2, intermediate=128, heads=1, kv_heads=1, head_dim=64, vocab=100)


def test_parameter_counts_by_hand_and_of_qwen() -> None:
    # per block: q, k, v, o 64x64 each (16384) + gate, up, down 64x128 each (24576) + two norms (128) = 41088
    assert SMALL.n_params() == 100 * 64 + 2 * 41088 + 64 == 88640
    assert SMALL.lora_params(2, ["q_proj", "v_proj"]) == 2 * (2 * (64 + 64) + 2 * (64 + 64)) == 1024
    assert [round(s.n_params() / 1e6) for s in QWEN] == [494, 1544, 3086]  # 0.49B, 1.54B, 3.09B as published
    assert round(QWEN[0].lora_params(16, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                          "down_proj"]) / 1e6, 1) == 8.8  # PEFT's count for r=16 on all seven


def test_full_fine_tune_is_sixteen_bytes_a_parameter_plus_activations() -> None:
    found = estimate(SMALL, seq_len=10, sequences=3, bf16=True)
    assert found.weights + found.trainable == FULL_BYTES_PER_PARAM * 88640
    assert (found.weights, found.trainable) == (2 * 88640, 14 * 88640)
    # 30 tokens x (34 bytes x 64 wide x 2 layers + 100 fp32 logits)
    assert found.activations == 30 * (34 * 64 * 2 + 100 * 4) == 142560
    assert estimate(SMALL, 10, 3, reference=True).weights == 4 * 88640  # DPO's frozen reference copy
    fp32 = estimate(SMALL, 10, 3, bf16=False)
    assert (fp32.weights, fp32.trainable) == (4 * 88640, 12 * 88640)
    assert fp32.activations == 30 * (2 * 34 * 64 * 2 + 400)


def test_lora_pays_sixteen_bytes_only_on_the_adapter_and_checkpointing_keeps_layer_inputs() -> None:
    found = estimate(SMALL, 10, 3, lora_r=2, checkpointing=True, reference=True, targets=["q_proj", "v_proj"])
    assert found.weights == 2 * 88640 + 4 * 1024  # frozen bf16 base + fp32 adapter; LoRA's reference is the base
    assert found.trainable == 12 * 1024
    # each layer's 2-byte input kept, one layer's 34 bytes recomputed, the logits
    assert found.activations == 30 * (64 * (2 * 2 + 34) + 400) == 84960
    assert found.total == found.weights + found.trainable + found.activations


def test_the_gpu_profile_fits_each_stage_of_a_3b_slm_on_one_24_gib_gpu() -> None:
    gpu = load_profile("gpu", root=ROOT)
    found = stage_estimates(QWEN[2], gpu)
    assert set(found) == {"sater.dpo", "sater.refusal", "corea.warmup", "corea.grpo"}
    assert all(e.gib()["total"] < 24 for e in found.values())
    full = stage_estimates(QWEN[2], gpu, full=True)
    assert all(full[k].total > 3 * found[k].total for k in found)  # LoRA is what makes it fit
    printed = table(gpu)
    assert printed.count("\n") == 2 + 3 * 4 - 1 and "| Qwen2.5-3B | 3.09B | corea.grpo |" in printed


def test_the_accelerate_configs_parse_for_eight_processes() -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {path.stem: load_config_from_file(str(path)) for path in (ROOT / "infra" / "accelerate").glob("*.yaml")}
    assert set(kinds) == {"ddp_8gpu", "fsdp_8gpu"}
    assert all(c.num_processes == 8 and c.mixed_precision == "bf16" for c in kinds.values())
    assert kinds["fsdp_8gpu"].fsdp_config["fsdp_use_orig_params"]  # LoRA's frozen and trainable parameters mixed
