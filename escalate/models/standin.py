"""Stand-ins for the gpu profile's checkpoints: Qwen2-architecture models built here from config, randomly
initialised, with a byte-level BPE trained on GSM8K text and a ChatML chat template, as Qwen's have.

They let the `standin` profile (configs/standin.yaml, the gpu profile but for model paths, sizes, device and
dtype) run gpu's code paths where Qwen's weights cannot be downloaded: the Qwen2 architecture, a tokenizer
other than the zoo's, chat templates. head_dim 64, so vLLM's CPU kernels can serve them. Accuracy means nothing.

Run: `python -m escalate.models.standin` (writes artifacts/standin/models/{slm,llm}).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

EOT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
# Qwen2.5's template, less its tool calls: a system turn unless the messages bring one, then ChatML turns.
CHATML = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# (hidden size, layers, heads, intermediate size) by role; heads are 64 wide. The LLM has ~9x the SLM's blocks.
SIZES = {"slm": (128, 2, 2, 384), "llm": (256, 4, 4, 768)}


def gsm8k_texts(path: Path) -> Iterator[str]:
    """Every question and worked answer of a GSM8K JSONL file."""
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            yield row["question"]
            yield row["answer"]


def train_tokenizer(texts: Iterator[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (Qwen's kind, digits split as Qwen splits them) with ChatML's special tokens and template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT, IM_START, IM_END],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    # As Qwen's: no bos, eos the end of an assistant turn, padding the end-of-text token, left-padded.
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=IM_END, pad_token=EOT, padding_side="left",
                                   additional_special_tokens=[IM_START, IM_END], chat_template=CHATML)


def build_model(role: str, tokenizer: PreTrainedTokenizerFast, seed: int, scale: float = 1.0) -> Qwen2ForCausalLM:
    """A random Qwen2 model of the role's size (widths times scale, in whole 64-wide heads)."""
    hidden, layers, heads, intermediate = SIZES[role]
    heads = max(1, round(heads * scale))
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64 * heads, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=1, head_dim=64,
                         intermediate_size=max(64, round(intermediate * scale)), max_position_embeddings=2048,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    return Qwen2ForCausalLM(config)


def build_standins(data: Path, out: Path, vocab_size: int = 2000, seed: int = 0, scale: float = 1.0) -> dict:
    """Train the tokenizer on `data` and save both stand-ins under out/{slm,llm}; returns their parameter counts."""
    tokenizer = train_tokenizer(gsm8k_texts(data), vocab_size)
    counts = {}
    for role in SIZES:
        model = build_model(role, tokenizer, seed, scale)
        model.save_pretrained(out / role)
        tokenizer.save_pretrained(out / role)
        counts[role] = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    (out / "standin.json").write_text(json.dumps({"vocab_size": len(tokenizer), "n_params": counts}, indent=2))
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m escalate.models.standin", description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="data/gsm8k/test.jsonl", help="the GSM8K JSONL the tokenizer learns from")
    parser.add_argument("--out", default="artifacts/standin/models", help="where slm/ and llm/ are written")
    parser.add_argument("--vocab-size", type=int, default=2000)
    args = parser.parse_args(argv)
    counts = build_standins(Path(args.data), Path(args.out), args.vocab_size)
    print(json.dumps({"out": args.out, "n_params": counts}))


if __name__ == "__main__":
    main()
