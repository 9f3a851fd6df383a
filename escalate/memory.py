"""How much GPU memory a training stage needs: plain arithmetic, to pick an SLM, LoRA or not, and a GPU.

The usual rule of thumb: full fine-tuning with Adam in mixed precision costs 16 bytes per parameter before
activations (bf16 weights 2 + bf16 gradients 2 + fp32 master weights 4 + Adam's two fp32 moments 8; in
plain fp32 it is 4 + 4 + 8, the same 16). LoRA freezes the base (2 bytes a parameter in bf16, 4 in fp32)
and pays those 16 bytes only on the adapter's parameters. Activations follow Korthikanti et al. 2022
("Reducing Activation Recomputation in Large Transformer Models"): 34 bytes per token per hidden unit per
layer in 16-bit with fused attention (the attention matrix never materialised); gradient checkpointing keeps
only each layer's 2-byte input and recomputes one layer at a time. The logits of every position are added in
fp32 (4 bytes per token per vocabulary entry): with Qwen's 152k vocabulary they are no rounding error.

It is an estimate to plan with, not a measurement: allocator slack, CUDA context (~0.5-1 GiB) and a
colocated vLLM's share (corea.grpo.vllm_gpu_memory) come on top.

Run: `python -m escalate.memory` (the README's table: Qwen2.5 0.5B, 1.5B and 3B under the gpu profile's
sections) or `python -m escalate.memory --profile standin`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from escalate.config import Profile, load_profile
from escalate.train.config import PROJECTIONS, LoopConfig

GIB = 2**30
FULL_BYTES_PER_PARAM = 16  # weights, gradients, fp32 master copy, Adam's two moments (see the module)
ACTIVATION_BYTES = 34  # per token, hidden unit and layer, in 16-bit (Korthikanti et al. 2022, fused attention)
PROMPT_TOKENS = 256  # GRPO keeps prompts whole beside max_length completion tokens: a GSM8K prompt's allowance


@dataclass(frozen=True)
class Shape:
    """A Llama/Qwen2 decoder's sizes: enough to count its parameters and its LoRA adapters."""

    name: str
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool = True  # the output layer shares the input embedding

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each projection of one block, by module name."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {"q_proj": (self.hidden, q), "k_proj": (self.hidden, kv), "v_proj": (self.hidden, kv),
                "o_proj": (q, self.hidden), "gate_proj": (self.hidden, self.intermediate),
                "up_proj": (self.hidden, self.intermediate), "down_proj": (self.intermediate, self.hidden)}

    def n_params(self) -> int:
        """Embeddings (once if tied), every block's projections and two norms, the final norm (biases left out)."""
        block = sum(i * o for i, o in self.linear_shapes().values()) + 2 * self.hidden
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.layers * block + self.hidden

    def lora_params(self, r: int, targets: list[str]) -> int:
        """LoRA's A (r x in) and B (out x r) on each targeted projection of every block."""
        return self.layers * sum(r * (i + o) for name, (i, o) in self.linear_shapes().items() if name in targets)


# Qwen2.5's instruct checkpoints (their config.json), the SLMs the gpu profile is sized for.
QWEN = (
    Shape("Qwen2.5-0.5B", hidden=896, layers=24, intermediate=4864, heads=14, kv_heads=2, head_dim=64, vocab=151_936),
    Shape("Qwen2.5-1.5B", hidden=1536, layers=28, intermediate=8960, heads=12, kv_heads=2, head_dim=128, vocab=151_936),
    Shape("Qwen2.5-3B", hidden=2048, layers=36, intermediate=11008, heads=16, kv_heads=2, head_dim=128, vocab=151_936),
)


@dataclass(frozen=True)
class Estimate:
    """Bytes of one training process, by what holds them."""

    weights: int  # every model copy held: the trained one, and a frozen reference where there is one
    trainable: int  # gradients, master copy and Adam's moments of what trains (FULL_BYTES_PER_PARAM less weights)
    activations: int  # saved for the backward pass, and the fp32 logits

    @property
    def total(self) -> int:
        return self.weights + self.trainable + self.activations

    def gib(self) -> dict[str, float]:
        return {k: round(getattr(self, k) / GIB, 2) for k in ("weights", "trainable", "activations", "total")}


def estimate(shape: Shape, seq_len: int, sequences: int, lora_r: int | None = None, bf16: bool = True,
             checkpointing: bool = False, reference: bool = False, targets: list[str] = PROJECTIONS) -> Estimate:
    """One process's memory for `sequences` sequences of `seq_len` tokens per forward pass.

    lora_r None: a full fine-tune (16 bytes a parameter); else LoRA of that rank on `targets`, the base frozen.
    reference: a frozen second copy for DPO's reference model (a full fine-tune's; LoRA's reference is the same
    weights with the adapters off).
    """
    n, width = shape.n_params(), 2 if bf16 else 4
    if lora_r is None:  # every parameter trains; its own weight is counted under weights
        weights, trainable = n * width * (2 if reference else 1), n * (FULL_BYTES_PER_PARAM - width)
    else:  # the base frozen; the adapter (kept in fp32 by PEFT) trains
        adapter = shape.lora_params(lora_r, targets)
        weights, trainable = n * width + adapter * 4, adapter * (FULL_BYTES_PER_PARAM - 4)
    scale, tokens = width // 2, seq_len * sequences  # activations: 16-bit in the rule, twice that in fp32
    per_token = shape.hidden * scale * (2 * shape.layers + ACTIVATION_BYTES if checkpointing
                                        else ACTIVATION_BYTES * shape.layers)
    return Estimate(weights, trainable, tokens * (per_token + shape.vocab * 4))


def stage_estimates(shape: Shape, profile: Profile, full: bool = False) -> dict[str, Estimate]:
    """Each training stage of the profile's method sections, on an SLM of this shape (full: as a full fine-tune
    whatever the section says): DPO scores chosen and rejected together (twice the sequences); GRPO's
    sequences are a prompt and a completion."""
    def one(cfg: LoopConfig, seq_len: int, sequences: int, reference: bool = False) -> Estimate:
        lora = None if full else cfg.lora
        return estimate(shape, seq_len, sequences, None if lora is None else lora.r, cfg.bf16,
                        cfg.gradient_checkpointing, reference, PROJECTIONS if lora is None else lora.target_modules)

    found: dict[str, Estimate] = {}
    if profile.sater is not None:
        dpo, refusal = profile.sater.dpo, profile.sater.refusal
        found["sater.dpo"] = one(dpo, dpo.max_length, 2 * dpo.batch_size, reference=True)
        found["sater.refusal"] = one(refusal, refusal.max_length, refusal.batch_size)
    if profile.corea is not None:
        warmup, grpo = profile.corea.warmup, profile.corea.grpo
        found["corea.warmup"] = one(warmup, warmup.max_length, warmup.batch_size)
        found["corea.grpo"] = one(grpo, PROMPT_TOKENS + grpo.max_length, grpo.batch_size, reference=grpo.beta > 0)
    return found


def table(profile: Profile, shapes: tuple[Shape, ...] = QWEN) -> str:
    """A markdown table: one row per SLM and stage, the GiB of each part and the total as the profile trains
    it, and the total of a full fine-tune at the same lengths and batch for comparison."""
    lines = ["| SLM | params | stage | weights | trainable | activations | total GiB | full fine-tune GiB |",
             "|---|---|---|---|---|---|---|---|"]
    for shape in shapes:
        full = stage_estimates(shape, profile, full=True)
        for stage, found in stage_estimates(shape, profile).items():
            g = found.gib()
            lines.append(f"| {shape.name} | {shape.n_params() / 1e9:.2f}B | {stage} | {g['weights']} | {g['trainable']} "
                         f"| {g['activations']} | {g['total']} | {full[stage].gib()['total']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m escalate.memory", description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="gpu", help="the profile whose sater and corea sections size each stage")
    parser.add_argument("--root", default=".", help="where configs/ is")
    args = parser.parse_args(argv)
    print(table(load_profile(args.profile, root=args.root)))


if __name__ == "__main__":
    main()
