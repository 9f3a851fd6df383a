"""Token-level decoding (CITER, arXiv 2502.01976): the SLM writes each token unless the router calls the LLM.

Both models run in process, each with its own KV cache. Per token: the SLM steps on the tokens it has
not seen (the prompt, then one token); the router scores the SLM's last hidden state; where the score
says so, the LLM steps too, first catching its cache up, in the same forward pass, on every token
written since it last ran. The chosen token then enters both token streams, so neither cache is ever
recomputed.

τ rule: the LLM writes when P(LLM needed) > τ. It is evaluated on the router's logit against
logit(τ), so that both ends are exact whatever the router says: τ = 0 gives every token to the LLM
(logit(0) = −∞ lies below any finite logit) and τ = 1 none (logit(1) = +∞), where a comparison of
probabilities would flip on a sigmoid that rounds to exactly 0 or 1.

Cost is counted per sequence as if it were decoded alone (CITER's measure is data moved): a forward
pass reads every weight once and the KV cache of every position its last token attends to, and
computes 2 · parameters FLOPs per token it processes. Sequences are decoded together in lock step,
left-padded; when any of them needs the LLM, the LLM catches up on all of them, which changes what
this machine computes but not what each sequence is charged, nor its tokens.

Serving needs no pipeline state: `TokenLevelDecoder.from_checkpoints(slm_dir, llm_dir, router_dir,
tau).generate(prompts, max_new_tokens)`; escalate.citer.cascade wraps it as a registrable cascade.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from escalate.citer.router import FixedRouter, TokenRouter
from escalate.models.backends.hf import DTYPES, resolve_device

ROLES = ("slm", "llm", "router")


@dataclass(frozen=True)
class ModelCost:
    """What one forward pass of a model reads and computes."""

    n_params: int
    weight_bytes: int
    kv_bytes_per_token: int  # keys and values of one position, all layers

    @classmethod
    def of(cls, model: torch.nn.Module) -> ModelCost:
        """Parameters counted once (tied embeddings are one matrix); KV size from a transformer's config."""
        params = {id(p): p for p in model.parameters()}.values()
        config = getattr(model, "config", None)
        kv = 0
        if config is not None:
            heads = config.num_attention_heads
            head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
            kv_heads = getattr(config, "num_key_value_heads", None) or heads
            element = next(iter(params)).element_size()
            kv = 2 * config.num_hidden_layers * kv_heads * head_dim * element
        return cls(sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params), kv)

    def pass_bytes(self, context: int) -> int:
        """One forward pass whose last token sees `context` positions (its own included)."""
        return self.weight_bytes + self.kv_bytes_per_token * context

    def pass_flops(self, new_tokens: int) -> int:
        return 2 * self.n_params * new_tokens


def threshold_logit(tau: float) -> float:
    """logit(τ), with logit(0) = −∞ and logit(1) = +∞, so the two ends of the sweep are exact."""
    if not 0 <= tau <= 1:
        raise ValueError(f"tau must be in [0, 1], got {tau}")
    if tau in (0, 1):
        return -math.inf if tau == 0 else math.inf
    return math.log(tau / (1 - tau))


@dataclass
class TokenLevelGeneration:
    """One decoded continuation and what it cost, per role ("slm", "llm", "router")."""

    text: str
    token_ids: list[int]
    sources: list[str]  # per token: the model that wrote it, "slm" or "llm"
    llm_scores: list[float]  # per token: the router's P(LLM needed)
    n_prompt_tokens: int
    bytes_moved: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ROLES, 0))
    flops: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ROLES, 0))
    llm_passes: int = 0  # forward passes the LLM made for this sequence (each catch-up is one)
    latency_s: float = 0.0  # the batch's wall time shared evenly among its sequences
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(ROLES, 0.0))  # of it, in each role
    finish_reason: str = "stop"

    @property
    def n_output_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def n_llm_tokens(self) -> int:
        return self.sources.count("llm")


def load_pair(slm_dir: str | Path, llm_dir: str | Path, device: str = "cpu", slm_dtype: str = "float32",
              llm_dtype: str = "float32") -> tuple[PreTrainedModel, PreTrainedModel, PreTrainedTokenizerBase]:
    """The SLM, the LLM and their one tokenizer, on one device (the decoder mixes both models' tokens)."""
    tokenizer = AutoTokenizer.from_pretrained(str(slm_dir))
    if AutoTokenizer.from_pretrained(str(llm_dir)).get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"{slm_dir} and {llm_dir} have different tokenizers; token-level routing needs one")
    device = resolve_device(device)
    slm, llm = (AutoModelForCausalLM.from_pretrained(str(d), dtype=DTYPES[t]).to(device).eval()
                for d, t in ((slm_dir, slm_dtype), (llm_dir, llm_dtype)))
    return slm, llm, tokenizer


def _forward(model: PreTrainedModel, cache: DynamicCache, seq: torch.Tensor, mask: torch.Tensor,
             seen: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `model` on the columns its cache has not seen; the last position's hidden state and logits.

    Positions follow the attention mask (left padding), as in transformers' generate, so a sequence
    gets the same logits whatever it is batched with.
    """
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    out = model(input_ids=seq[:, seen:], attention_mask=mask, position_ids=positions[:, seen:],
                past_key_values=cache, use_cache=True, output_hidden_states=True, logits_to_keep=1)
    return out.hidden_states[-1][:, -1], out.logits[:, -1]


class TokenLevelDecoder:
    """Greedy token-level collaboration of an SLM and an LLM that share a tokenizer.

    router: a module from the SLM's last hidden state (batch, hidden) to logits of P(LLM needed)
    (escalate.citer.router.TokenRouter, or FixedRouter where τ alone decides).
    """

    def __init__(self, slm: PreTrainedModel, llm: PreTrainedModel, tokenizer, router: torch.nn.Module,
                 tau: float, batch_size: int = 64, chat_template: bool = False) -> None:
        if slm.config.vocab_size != llm.config.vocab_size:
            raise ValueError(f"token-level routing needs one vocabulary; the SLM has {slm.config.vocab_size} "
                             f"tokens, the LLM {llm.config.vocab_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.models = {"slm": slm.eval(), "llm": llm.eval()}
        self.router = router.eval()
        self.tokenizer = tokenizer
        self.tau = tau
        self.threshold = threshold_logit(tau)
        self.batch_size = batch_size
        self.chat_template = chat_template
        self.costs = {"slm": ModelCost.of(slm), "llm": ModelCost.of(llm), "router": ModelCost.of(router)}

    @classmethod
    def from_checkpoints(cls, slm_dir: str | Path, llm_dir: str | Path, router_dir: str | Path | None, tau: float,
                         batch_size: int = 64, device: str = "cpu", chat_template: bool = False,
                         dtype: str = "float32") -> TokenLevelDecoder:
        """A decoder from two HF checkpoints and a saved router (None: FixedRouter, τ alone decides)."""
        slm, llm, tokenizer = load_pair(slm_dir, llm_dir, device, dtype, dtype)
        router = FixedRouter() if router_dir is None else TokenRouter.load(router_dir)
        return cls(slm, llm, tokenizer, router.to(slm.device), tau, batch_size, chat_template)

    def encode(self, prompt: str) -> list[int]:
        """Prompt token ids as the models were trained on them: the chat template, or after the bos token."""
        if self.chat_template:
            return list(self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True))
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        bos = self.tokenizer.bos_token_id
        return [bos, *ids] if bos is not None else ids

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[TokenLevelGeneration]:
        return self.generate_ids([self.encode(p) for p in prompts], max_new_tokens)

    @torch.inference_mode()
    def generate_ids(self, contexts: list[list[int]], max_new_tokens: int | list[int]) -> list[TokenLevelGeneration]:
        """Continue token-id contexts; `max_new_tokens` may differ per context (a rollout's remaining budget)."""
        budgets = [max_new_tokens] * len(contexts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
        if len(budgets) != len(contexts) or any(b < 1 for b in budgets) or any(not c for c in contexts):
            raise ValueError("every context needs at least one token and a budget of at least one new token")
        # Batches of similar lengths waste less on padding; the results come back in the callers' order.
        order = sorted(range(len(contexts)), key=lambda i: (len(contexts[i]), budgets[i]))
        out: list[TokenLevelGeneration | None] = [None] * len(contexts)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            for i, gen in zip(chunk, self._batch([contexts[i] for i in chunk], [budgets[i] for i in chunk])):
                out[i] = gen
        return out

    def _batch(self, contexts: list[list[int]], budgets: list[int]) -> list[TokenLevelGeneration]:
        device = next(self.models["slm"].parameters()).device
        pad, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        pad = eos if pad is None else pad
        width = max(map(len, contexts))
        seq = torch.tensor([[pad] * (width - len(c)) + c for c in contexts], device=device)
        mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in contexts], device=device)
        caches = {role: DynamicCache(config=m.config) for role, m in self.models.items()}
        seen = dict.fromkeys(caches, 0)  # columns of `seq` each cache holds, common to the batch
        gens = [TokenLevelGeneration("", [], [], [], len(c)) for c in contexts]
        active = list(range(len(contexts)))  # original indices of the rows still in the batch
        context = [len(c) for c in contexts]  # per original row: real tokens so far
        llm_seen = [0] * len(contexts)  # per original row: tokens its own LLM cache would hold
        spent = dict.fromkeys(ROLES, 0.0)  # the batch's seconds in each role's forward passes
        start = time.perf_counter()
        while active:
            t0 = time.perf_counter()
            hidden, logits = _forward(self.models["slm"], caches["slm"], seq, mask, seen["slm"])
            seen["slm"] = seq.shape[1]
            t1 = time.perf_counter()
            router_logits = self.router(hidden.float()).float()
            if not torch.isfinite(router_logits).all():
                raise ValueError("the router gave a non-finite score")
            use_llm = router_logits > self.threshold
            chosen = logits.argmax(-1)
            t2 = time.perf_counter()
            spent["slm"], spent["router"] = spent["slm"] + t1 - t0, spent["router"] + t2 - t1
            if use_llm.any():
                _, llm_logits = _forward(self.models["llm"], caches["llm"], seq, mask, seen["llm"])
                seen["llm"] = seq.shape[1]
                chosen = torch.where(use_llm, llm_logits.argmax(-1), chosen)
                spent["llm"] += time.perf_counter() - t2
            scores = torch.sigmoid(router_logits).tolist()
            finished = []
            for row, (i, token, llm, score) in enumerate(zip(active, chosen.tolist(), use_llm.tolist(), scores)):
                g, n = gens[i], context[i]
                self._charge(g, "slm", n, 1 if g.token_ids else n)  # first the prompt (its pads are no tokens)
                self._charge(g, "router", 0, 1)
                if llm:
                    self._charge(g, "llm", n, n - llm_seen[i])
                    llm_seen[i], g.llm_passes = n, g.llm_passes + 1
                g.token_ids.append(token)
                g.sources.append("llm" if llm else "slm")
                g.llm_scores.append(score)
                context[i] += 1
                if token == eos or len(g.token_ids) >= budgets[i]:
                    g.finish_reason = "stop" if token == eos else "length"
                    finished.append(row)
            seq = torch.cat([seq, chosen.unsqueeze(-1)], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            if finished:
                keep = [row for row in range(len(active)) if row not in set(finished)]
                active = [active[row] for row in keep]
                index = torch.tensor(keep, device=device, dtype=torch.long)
                seq, mask = seq[index], mask[index]
                for cache in caches.values():
                    cache.batch_select_indices(index)
        latency = (time.perf_counter() - start) / len(contexts)
        for g in gens:
            text_ids = g.token_ids[:-1] if g.finish_reason == "stop" else g.token_ids
            g.text = self.tokenizer.decode(text_ids, skip_special_tokens=True)
            g.latency_s = latency
            g.seconds = {role: t / len(contexts) for role, t in spent.items()}
        return gens

    def _charge(self, g: TokenLevelGeneration, role: str, context: int, new_tokens: int) -> None:
        """One forward pass of `role` for one sequence: its last token sees `context` positions."""
        cost = self.costs[role]
        g.bytes_moved[role] += cost.pass_bytes(context)
        g.flops[role] += cost.pass_flops(new_tokens)
