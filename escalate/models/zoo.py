"""The zoo: a tokenizer and two Llama models pretrained from scratch on `arith` text.

No weights can be downloaded where escalate is built, so the `tiny` and `smoke` profiles bring their
own SLM and "LLM": ordinary Hugging Face checkpoints (safetensors + tokenizer.json), so every later
stage (sampling, DPO, GRPO, vLLM serving) runs on them exactly as it would on Qwen or Llama.

Each model is graded on a calib sample as it trains and the best-scoring weights are kept (`Plateau`):
float sums differ between CPUs and thread counts, so two machines' last steps can land far apart, while
the plateau both reach, and the peak kept on it, lies near the same accuracy.

Run: `escalate zoo build --profile tiny` (a DVC stage; DVC skips it when its inputs are unchanged).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from escalate.config import ArchConfig, ArithConfig, PretrainConfig, ZooConfig
from escalate.data import arith
from escalate.data.graders import GRADERS
from escalate.models.backends.hf import left_padded
from escalate.prompts import format_prompt

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
CalibItem = tuple[str, str, str]  # (prompt, gold answer, grader kind): one calib question, ready to grade


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE with every digit its own token: numbers stay legible to a tiny model."""
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK, padding_side="left"
    )


def build_model(arch: ArchConfig, tokenizer: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    """A randomly initialised Llama model of the given shape."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        num_key_value_heads=arch.num_heads,
        head_dim=arch.head_dim,
        max_position_embeddings=arch.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def n_params(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def corpus(cfg: ArithConfig, n: int, seed: int, exclude: set[str]) -> list[tuple[str, str]]:
    """`n` fresh (prompt, completion) pairs, styles mixed by `cfg.style_weights`, none in `exclude`."""
    rng = random.Random(seed)
    styles, weights = zip(*cfg.style_weights.items())
    out: list[tuple[str, str]] = []
    levels = list(range(cfg.min_steps, cfg.max_steps + 1))
    while len(out) < n:
        problem = arith.make_problem(rng, rng.choice(levels), cfg.max_operand)
        question = problem.question()
        if question in exclude:
            continue
        style = rng.choices(styles, weights)[0]
        out.append((format_prompt(question), " " + problem.solution(style)))
    return out


def encode(pairs: list[tuple[str, str]], tokenizer: PreTrainedTokenizerFast) -> list[tuple[list[int], int]]:
    """Token ids of bos + prompt + completion + eos, and where the completion starts."""
    prompts = tokenizer([p for p, _ in pairs], add_special_tokens=False)["input_ids"]
    completions = tokenizer([c for _, c in pairs], add_special_tokens=False)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return [([bos, *p, *c, eos], 1 + len(p)) for p, c in zip(prompts, completions)]


def collate(batch: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; the loss covers only completion tokens (the question is given, not learned)."""
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id)
    labels = torch.full((len(batch), width), -100)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (ids, start) in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, start : len(ids)] = torch.tensor(ids[start:])
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


@torch.inference_mode()
def greedy_answers(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, prompts: list[str],
                   max_new_tokens: int, batch_size: int = 128) -> list[str]:
    """Greedy completions read as the sample stage's sample 0 is (bos + prompt, left-padded, up to eos)."""
    training = model.training
    model.eval()
    bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        ids = tokenizer(prompts[start : start + batch_size], add_special_tokens=False)["input_ids"]
        input_ids, mask, _ = left_padded([[bos, *i] for i in ids], pad, str(model.device))
        out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        answers += tokenizer.batch_decode(out[:, input_ids.shape[1] :], skip_special_tokens=True)
    model.train(training)
    return answers


def accuracy(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, items: list[CalibItem],
             max_new_tokens: int) -> float:
    """Share of `items` whose greedy answer the question's grader accepts."""
    answers = greedy_answers(model, tokenizer, [p for p, _, _ in items], max_new_tokens)
    return sum(GRADERS[kind](a, gold) for a, (_, gold, kind) in zip(answers, items)) / len(items)


@dataclass
class Plateau:
    """Calib evaluations during pretraining: the curve, the best weights so far, and when patience runs out.

    A tie goes to the later weights: on a flat stretch they have seen more data at the same accuracy.
    """

    score: Callable[[LlamaForCausalLM], float]
    every: int  # 0: one evaluation, after the last step
    patience: int | None
    curve: list[dict] = field(default_factory=list)
    best_step: int = 0
    best_score: float = -1.0
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    stale: int = 0  # evaluations since the last strict improvement
    stopped: str = ""

    def due(self, step: int, total: int) -> bool:
        return step == total or (self.every > 0 and step % self.every == 0)

    def check(self, model: LlamaForCausalLM, step: int, losses: list[float], total: int) -> bool:
        """Evaluate after `step` of `total` steps, keep the weights if they score best; True when patience has
        run out before the last step."""
        since = self.curve[-1]["step"] if self.curve else 0
        score = self.score(model)
        self.curve.append({"step": step, "loss": sum(losses[since:]) / (step - since), "calib_accuracy": score})
        self.stale = 0 if score > self.best_score else self.stale + 1
        if score >= self.best_score:
            self.best_step, self.best_score = step, score
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if self.patience is not None and self.stale >= self.patience and step < total:
            self.stopped = (f"patience: no better calib accuracy in {self.stale} evaluations "
                            f"(best {self.best_score:.3f} at step {self.best_step})")
            return True
        return False

    def restore(self, model: LlamaForCausalLM, steps: int) -> dict:
        """Load the best weights into `model`; returns what zoo.json records of the run."""
        model.load_state_dict(self.best_state)
        self.stopped = self.stopped or f"steps: ran all {steps} steps"
        return {"calib_accuracy": self.best_score, "chosen_step": self.best_step, "stopped": self.stopped,
                "curve": self.curve}


def pretrain(
    model: LlamaForCausalLM,
    examples: list[tuple[list[int], int]],
    cfg: PretrainConfig,
    pad_id: int,
    seed: int,
    desc: str = "pretrain",
    on_step: Callable[[int, float], None] | None = None,
    plateau: Plateau | None = None,
) -> list[float]:
    """AdamW with warmup and cosine decay over `cfg.steps` batches; returns the loss of every step run.

    With a `plateau`, the model is graded when it is due, training stops when its patience runs out, and
    the model ends holding the best-scoring weights rather than the last.
    """
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    losses: list[float] = []
    order: list[int] = []
    bar = tqdm(range(cfg.steps), desc=desc, unit="step", dynamic_ncols=True)
    for step in bar:
        if len(order) < cfg.batch_size:
            order += rng.sample(range(len(examples)), len(examples))
        batch = [examples[order.pop()] for _ in range(cfg.batch_size)]
        loss = model(**collate(batch, pad_id)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if on_step:
            on_step(step, losses[-1])
        if plateau is not None and plateau.due(step + 1, cfg.steps):
            stop = plateau.check(model, step + 1, losses, cfg.steps)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", calib=f"{plateau.curve[-1]['calib_accuracy']:.3f}")
            if stop:
                break
    bar.close()
    model.eval()
    return losses


def build_zoo(cfg: ZooConfig, arith_cfg: ArithConfig, out_dir: Path, seed: int, exclude: set[str],
              calib: list[CalibItem] | None = None) -> dict:
    """Train the tokenizer, pretrain the SLM and the LLM, save both as HF checkpoints under `out_dir`.

    Returns a summary (parameter counts, final losses, timings) that is also written to
    `out_dir/zoo.json`; the loss curves go to `out_dir/<role>/losses.json` for the tracker. With `calib`,
    each model keeps its best weights on it (`Plateau`), and the summary adds its calib accuracy, the
    chosen step, why training stopped and the curve (step, loss, calib accuracy).
    """
    largest = max(m.train.steps * m.train.batch_size for m in (cfg.slm, cfg.llm))
    pairs = corpus(arith_cfg, largest, seed + 1, exclude)
    tokenizer = train_tokenizer((p + c for p, c in pairs[:20_000]), cfg.vocab_size)
    examples = encode(pairs, tokenizer)
    summary: dict = {"vocab_size": len(tokenizer), "corpus_examples": len(pairs), "models": {}}
    if calib:
        summary["calib_questions"] = len(calib)
    sizes = {}
    for role, mcfg in (("slm", cfg.slm), ("llm", cfg.llm)):
        model = build_model(mcfg.arch, tokenizer, seed)
        sizes[role] = n_params(model)
        plateau = Plateau(lambda m: accuracy(m, tokenizer, calib, cfg.eval_max_new_tokens),
                          mcfg.train.eval_every, mcfg.train.patience) if calib else None
        start = time.perf_counter()
        losses = pretrain(model, examples, mcfg.train, tokenizer.pad_token_id, seed, desc=f"zoo {role}",
                          plateau=plateau)
        elapsed = time.perf_counter() - start
        chosen = plateau.restore(model, len(losses)) if plateau else {}
        target = out_dir / role
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
        (target / "losses.json").write_text(json.dumps(losses))
        summary["models"][role] = {
            "n_params": sizes[role],
            "final_loss": sum(losses[-20:]) / min(20, len(losses)),
            "train_seconds": round(elapsed, 1),
            "steps_run": len(losses),
            "arch": asdict(mcfg.arch),
            "train": asdict(mcfg.train),
            **chosen,
        }
    ratio = sizes["llm"] / sizes["slm"]
    summary["param_ratio"] = ratio
    if ratio < cfg.min_param_ratio:
        raise ValueError(f"zoo: the LLM has {ratio:.1f}x the SLM's parameters, below min_param_ratio "
                         f"{cfg.min_param_ratio:g}; enlarge zoo.llm.arch or shrink zoo.slm.arch")
    (out_dir / "zoo.json").write_text(json.dumps(summary, indent=2))
    return summary
