"""In-process Hugging Face generation: the default backend for the zoo models.

Prompts are generated in left-padded batches. Log-probabilities and entropies come from the raw
logits (temperature 1), so P(T) means the same for greedy and sampled generations. Latency is the
batch's wall time divided evenly among its generations: batched decoding has no per-query time.
"""

from __future__ import annotations

import time
from functools import cache

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from escalate.models.backends.base import (
    BackendError,
    Generation,
    GenerationBackend,
    SamplingParams,
    offsets_from_pieces,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendError(f"device {device!r} asked for, but no CUDA device is visible; set device: cpu")
    return device


class HFBackend(GenerationBackend):
    name = "hf"

    def __init__(
        self,
        path: str,
        dtype: str = "float32",
        device: str = "cpu",
        batch_size: int = 64,
        chat_template: bool = False,
    ) -> None:
        self.device = resolve_device(device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = (
                AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype]).to(self.device).eval()
            )
        except (OSError, ValueError) as exc:
            raise BackendError(f"cannot load model from {path!r}: {exc}") from None
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.batch_size = batch_size
        self.chat_template = chat_template

    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids of one prompt, with the chat template or the bos token the model was trained with."""
        if self.chat_template:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
            )
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        bos = self.tokenizer.bos_token_id
        return [bos, *ids] if bos is not None else ids

    @torch.inference_mode()
    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Generation]]:
        encoded = [self.encode_prompt(p) for p in prompts for _ in range(params.n)]
        flat: list[Generation] = []
        torch.manual_seed(params.seed)
        for start in range(0, len(encoded), self.batch_size):
            flat += self._batch(encoded[start : start + self.batch_size], params)
        return [flat[i * params.n : (i + 1) * params.n] for i in range(len(prompts))]

    def _batch(self, batch: list[list[int]], params: SamplingParams) -> list[Generation]:
        pad = self.tokenizer.pad_token_id
        width = max(len(ids) for ids in batch)
        input_ids, mask, _ = left_padded(batch, pad, self.device)  # generate derives positions from the mask
        sampling = (
            {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p}
            if params.temperature > 0
            else {"do_sample": False}
        )
        start = time.perf_counter()
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=params.max_new_tokens,
            return_dict_in_generate=True,
            output_logits=True,
            pad_token_id=pad,
            eos_token_id=self.tokenizer.eos_token_id,
            **sampling,
        )
        latency = (time.perf_counter() - start) / len(batch)
        new = out.sequences[:, width:]
        logprobs = torch.stack(out.logits, dim=1).float().log_softmax(-1)  # (batch, steps, vocab)
        chosen = logprobs.gather(-1, new.unsqueeze(-1)).squeeze(-1)
        entropy = -(logprobs.exp() * logprobs).nan_to_num().sum(-1)
        return [self._one(new[i], chosen[i], entropy[i], len(batch[i]), latency) for i in range(len(batch))]

    def _one(
        self, ids: torch.Tensor, lps: torch.Tensor, ents: torch.Tensor, n_prompt: int, latency: float
    ) -> Generation:
        ids_list = ids.tolist()
        eos = self.tokenizer.eos_token_id
        n = ids_list.index(eos) + 1 if eos in ids_list else len(ids_list)
        text_ids = ids_list[: n - 1] if eos in ids_list else ids_list
        pieces = [self.tokenizer.decode([t], skip_special_tokens=True) for t in ids_list[:n]]
        return Generation(
            text=self.tokenizer.decode(text_ids, skip_special_tokens=True),
            token_offsets=offsets_from_pieces(pieces),
            token_ids=ids_list[:n],
            token_logprobs=[float(x) for x in lps[:n]],
            token_entropies=[float(x) for x in ents[:n]],
            n_prompt_tokens=n_prompt,
            latency_s=latency,
            finish_reason="stop" if eos in ids_list else "length",
        )


def left_padded(encoded: list[list[int]], pad_id: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask and position_ids of a left-padded batch for one forward pass; positions
    count from each sequence's own first token, so a prompt reads the same in any batch."""
    width = max(len(e) for e in encoded)
    ids = torch.tensor([[pad_id] * (width - len(e)) + e for e in encoded], device=device)
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


@cache
def shared_backend(path: str, device: str = "auto") -> HFBackend:
    """One in-process copy of a checkpoint per process, for the routers that read the SLM before it answers
    (the P(IK) probe, SATER's refusal probability): a checkpoint is loaded once however many routers read it."""
    return HFBackend(path, device=device, batch_size=32)
