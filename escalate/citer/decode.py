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
this machine computes but not what each sequence is charged, nor its tokens. A sequence may also join
a batch already decoding (DecodeBatch, which a server's batcher feeds between steps), with the same
guarantee.

Serving needs no pipeline state: `TokenLevelDecoder.from_checkpoints(slm_dir, llm_dir, router_dir,
tau).generate(prompts, max_new_tokens)`; escalate.citer.cascade wraps it as a registrable cascade.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

    def batch(self) -> DecodeBatch:
        """An empty batch to admit sequences into and step, for a caller that schedules its own rows (a server)."""
        return DecodeBatch(self)

    def _batch(self, contexts: list[list[int]], budgets: list[int]) -> list[TokenLevelGeneration]:
        """One batch decoded to its end; each sequence is charged an even share of its wall time."""
        batch = self.batch()
        start = time.perf_counter()
        gens = batch.admit(contexts, budgets)
        while batch:
            batch.step()
        latency = (time.perf_counter() - start) / len(contexts)
        for g in gens:
            g.latency_s = latency
            g.seconds = {role: t / len(contexts) for role, t in batch.spent.items()}
        return gens

    def _charge(self, g: TokenLevelGeneration, role: str, context: int, new_tokens: int) -> None:
        """One forward pass of `role` for one sequence: its last token sees `context` positions."""
        cost = self.costs[role]
        g.bytes_moved[role] += cost.pass_bytes(context)
        g.flops[role] += cost.pass_flops(new_tokens)


@dataclass
class _Row:
    """One sequence in a DecodeBatch, with what its cost accounting needs to treat it as decoded alone."""

    gen: TokenLevelGeneration
    budget: int
    tag: Any  # the caller's handle for it, given back when it finishes
    context: int  # real tokens so far: the prompt, then every token written
    llm_seen: int = 0  # tokens its own LLM cache would hold, were it decoded alone
    started: float = field(default_factory=time.perf_counter)
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(ROLES, 0.0))


class DecodeBatch:
    """Sequences decoded in lock step, which new ones may join between steps (continuous batching).

    All rows share one left-padded token matrix and, per model, one KV cache holding the matrix's first
    `seen[role]` columns. A joining row is right-aligned with the rest (its prompt's last token in the
    newest column, which no cache holds yet), the matrix first widened on the left if its prompt is
    longer; each model whose cache is not empty prefills the new rows on the columns it holds, so all
    rows again share one cache length, and the next step treats old and new rows alike. Positions follow
    the mask, so a row's logits do not depend on what it is batched with, nor on when it joined, and
    its tokens, sources and costs are those of decoding it alone. Leading columns that are padding in
    every row are dropped at each join, so the width follows the rows in flight, not the batch's past.

    Time is charged per row: each forward pass's seconds to every row it waited for (`seconds`), and a
    finished row's `latency_s` is its time in the batch.
    """

    def __init__(self, decoder: TokenLevelDecoder) -> None:
        self.decoder = decoder
        self.device = next(decoder.models["slm"].parameters()).device
        pad, eos = decoder.tokenizer.pad_token_id, decoder.tokenizer.eos_token_id
        self.pad, self.eos = (eos if pad is None else pad), eos
        self.rows: list[_Row] = []
        self.spent = dict.fromkeys(ROLES, 0.0)  # all seconds in each role's forward passes
        self._reset()

    def __len__(self) -> int:
        return len(self.rows)

    def _reset(self) -> None:
        self.seq = self.mask = torch.zeros((0, 0), dtype=torch.long, device=self.device)
        self.caches = {role: DynamicCache(config=m.config) for role, m in self.decoder.models.items()}
        self.seen = dict.fromkeys(self.caches, 0)  # columns of `seq` each cache holds, common to the rows

    @torch.inference_mode()
    def admit(self, contexts: list[list[int]], budgets: list[int], tags: list[Any] | None = None
              ) -> list[TokenLevelGeneration]:
        """Add sequences (token ids, each with its budget of new tokens); their generations fill as they decode."""
        tags = [None] * len(contexts) if tags is None else tags
        if not contexts or len(budgets) != len(contexts) or len(tags) != len(contexts):
            raise ValueError("admit at least one context, each with one budget and one tag")
        if any(b < 1 for b in budgets) or any(not c for c in contexts):
            raise ValueError("every context needs at least one token and a budget of at least one new token")
        joining = bool(self.rows)
        if joining:
            self._trim()
        else:
            self._reset()
        width = max(self.seq.shape[1], max(map(len, contexts)))
        self._widen(width - self.seq.shape[1])
        seq = torch.tensor([[self.pad] * (width - len(c)) + c for c in contexts], device=self.device)
        mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in contexts], device=self.device)
        rows = [_Row(TokenLevelGeneration("", [], [], [], len(c)), b, tag, len(c))
                for c, b, tag in zip(contexts, budgets, tags)]
        self.rows += rows
        for role, seen in self.seen.items():
            if seen:  # the new rows catch up on what this cache holds for the others
                t0 = time.perf_counter()
                cache = DynamicCache(config=self.decoder.models[role].config)
                _forward(self.decoder.models[role], cache, seq[:, :seen], mask[:, :seen], 0)
                _stack(self.caches[role], cache)
                self._spend(role, time.perf_counter() - t0)
        self.seq, self.mask = (torch.cat([self.seq, seq]), torch.cat([self.mask, mask])) if joining else (seq, mask)
        return [row.gen for row in rows]

    @torch.inference_mode()
    def step(self) -> list[tuple[Any, TokenLevelGeneration]]:
        """One token for every row; returns the rows that finished, as (tag, generation), and drops them."""
        d, seq, mask = self.decoder, self.seq, self.mask
        t0 = time.perf_counter()
        hidden, logits = _forward(d.models["slm"], self.caches["slm"], seq, mask, self.seen["slm"])
        self.seen["slm"] = seq.shape[1]
        t1 = time.perf_counter()
        router_logits = d.router(hidden.float()).float()
        if not torch.isfinite(router_logits).all():
            raise ValueError("the router gave a non-finite score")
        use_llm = router_logits > d.threshold
        chosen = logits.argmax(-1)
        t2 = time.perf_counter()
        self._spend("slm", t1 - t0)
        self._spend("router", t2 - t1)
        if use_llm.any():
            _, llm_logits = _forward(d.models["llm"], self.caches["llm"], seq, mask, self.seen["llm"])
            self.seen["llm"] = seq.shape[1]
            chosen = torch.where(use_llm, llm_logits.argmax(-1), chosen)
            self._spend("llm", time.perf_counter() - t2)
        scores = torch.sigmoid(router_logits).tolist()
        keep, finished = [], []
        for index, (r, token, llm, score) in enumerate(zip(self.rows, chosen.tolist(), use_llm.tolist(), scores)):
            g, n = r.gen, r.context
            d._charge(g, "slm", n, 1 if g.token_ids else n)  # first the prompt (its pads are no tokens)
            d._charge(g, "router", 0, 1)
            if llm:
                d._charge(g, "llm", n, n - r.llm_seen)
                r.llm_seen, g.llm_passes = n, g.llm_passes + 1
            g.token_ids.append(token)
            g.sources.append("llm" if llm else "slm")
            g.llm_scores.append(score)
            r.context += 1
            if token == self.eos or len(g.token_ids) >= r.budget:
                g.finish_reason = "stop" if token == self.eos else "length"
                finished.append(self._finish(r))
            else:
                keep.append(index)
        self.seq = torch.cat([seq, chosen.unsqueeze(-1)], dim=1)
        self.mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        if finished:
            self.rows = [self.rows[i] for i in keep]
            index = torch.tensor(keep, device=self.device, dtype=torch.long)
            self.seq, self.mask = self.seq[index], self.mask[index]
            for cache in self.caches.values():
                cache.batch_select_indices(index)
        return finished

    def _finish(self, r: _Row) -> tuple[Any, TokenLevelGeneration]:
        g = r.gen
        g.text = self.decoder.tokenizer.decode(g.token_ids[:-1] if g.finish_reason == "stop" else g.token_ids,
                                               skip_special_tokens=True)
        g.latency_s, g.seconds = time.perf_counter() - r.started, dict(r.seconds)
        return r.tag, g

    def _spend(self, role: str, seconds: float) -> None:
        self.spent[role] += seconds
        for r in self.rows:
            r.seconds[role] += seconds

    def _widen(self, n: int) -> None:
        """n more padding columns on the left of every row, and of every cache holding any column."""
        if n <= 0 or not self.rows:
            return
        rows = len(self.seq)
        self.seq = torch.cat([self.seq.new_full((rows, n), self.pad), self.seq], dim=1)
        self.mask = torch.cat([self.mask.new_zeros((rows, n)), self.mask], dim=1)
        for role, cache in self.caches.items():
            if self.seen[role]:
                for layer in _layers(cache):
                    layer.keys, layer.values = (torch.cat([t.new_zeros((*t.shape[:2], n, t.shape[3])), t], dim=-2)
                                                for t in (layer.keys, layer.values))
                self.seen[role] += n

    def _trim(self) -> None:
        """Drop the leading columns that are padding in every row (left by rows that finished)."""
        n = int(self.mask.any(0).int().argmax()) if self.mask.any() else self.mask.shape[1]
        if n == 0:
            return
        self.seq, self.mask = self.seq[:, n:], self.mask[:, n:]
        for role, cache in self.caches.items():
            dropped = min(n, self.seen[role])
            self.seen[role] -= dropped
            if not self.seen[role]:
                self.caches[role] = DynamicCache(config=self.decoder.models[role].config)
            elif dropped:
                for layer in _layers(cache):
                    layer.keys, layer.values = layer.keys[..., dropped:, :], layer.values[..., dropped:, :]


def _layers(cache: DynamicCache) -> list:
    """The cache's filled layers, each [batch, kv_heads, positions, head_dim]; a sliding-window layer keeps
    only its window's positions, which column arithmetic cannot follow, so it is refused."""
    layers = [layer for layer in cache.layers if layer.is_initialized]
    if any(layer.is_sliding for layer in layers):
        raise ValueError("continuous batching needs full KV caches; this model has sliding-window layers")
    return layers


def _stack(cache: DynamicCache, rows: DynamicCache) -> None:
    """Append `rows` (a cache of the same length) to `cache` along the batch."""
    for layer, new in zip(_layers(cache), _layers(rows)):
        layer.keys, layer.values = torch.cat([layer.keys, new.keys]), torch.cat([layer.values, new.values])
