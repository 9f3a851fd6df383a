"""Sampling: K generations per question per model, graded, into the `samples` table.

Sample 0 is greedy (the answer a cascade gives); samples 1..K-1 are drawn at the profile's
temperature (self-consistency, SATER's preference pairs). Each row carries what every later metric
needs: correctness, token counts, per-token log-probabilities, log P(T) of the answer tokens, mean
entropy and latency.
"""

from __future__ import annotations

import math

import pandas as pd
from tqdm.auto import tqdm

from escalate.config import SamplingConfig
from escalate.data.graders import EXTRACTORS, GRADERS, answer_span
from escalate.models.backends.base import Generation, GenerationBackend, SamplingParams
from escalate.prompts import format_prompt


def answer_logprob(gen: Generation, kind: str) -> float | None:
    """log P(T): the summed log-probability of the tokens that spell the final answer, or None."""
    span = answer_span(gen.text, kind)
    if span is None or not gen.token_offsets:
        return None
    start, end = span
    ends = gen.token_offsets[1:] + [math.inf]
    picked = [lp for lp, s, e in zip(gen.token_logprobs, gen.token_offsets, ends) if s < end and e > start]
    return float(sum(picked)) if picked else None


def grader_kind(row: pd.Series) -> str:
    """Multiple-choice rows are graded by letter, everything else numerically."""
    choices = row.get("choices")
    return "choice" if isinstance(choices, str) and choices.strip() else "numeric"


def generation_rows(question: pd.Series, role: str, gens: list[Generation], first_idx: int,
                    gold: str | None = None) -> list[dict]:
    """Sample rows for one question's generations; `correct` is graded only when a gold answer is given.

    Offline sampling grades against the question's answer; the online cascade has no gold answer, so
    its rows carry everything a router reads except `correct`.
    """
    kind = grader_kind(question)
    rows = []
    for offset, gen in enumerate(gens):
        row = {
            "id": question["id"], "model": role, "split": question["split"], "sample_idx": first_idx + offset,
            "text": gen.text, "parsed_answer": EXTRACTORS[kind](gen.text),
        }
        if gold is not None:
            row["correct"] = bool(GRADERS[kind](gen.text, gold))
        row.update({
            "n_prompt_tokens": int(gen.n_prompt_tokens), "n_output_tokens": int(gen.n_output_tokens),
            "token_logprobs": [float(x) for x in gen.token_logprobs], "answer_logprob": answer_logprob(gen, kind),
            "mean_entropy": float(gen.mean_entropy), "latency_s": float(gen.latency_s),
        })
        rows.append(row)
    return rows


def to_rows(question: pd.Series, role: str, gens: list[Generation], first_idx: int) -> list[dict]:
    """The graded rows of offline sampling."""
    return generation_rows(question, role, gens, first_idx, gold=str(question["answer"]))


def generation_params(cfg: SamplingConfig, seed: int) -> tuple[SamplingParams, SamplingParams | None]:
    """Sample 0's greedy params and samples 1..K-1's sampled params (None when K = 1)."""
    greedy = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=0.0, seed=seed)
    sampled = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                             n=cfg.k - 1, seed=seed + 1) if cfg.k > 1 else None
    return greedy, sampled


def sample(backend: GenerationBackend, questions: pd.DataFrame, role: str, cfg: SamplingConfig,
           seed: int, chunk: int = 256) -> pd.DataFrame:
    """The samples table for `questions` from one model: K rows per question (sample_idx 0 greedy)."""
    greedy, sampled = generation_params(cfg, seed)
    rows: list[dict] = []
    bar = tqdm(total=len(questions) * cfg.k, desc=f"sample {role}", unit="gen", dynamic_ncols=True)
    for start in range(0, len(questions), chunk):
        part = questions.iloc[start : start + chunk]
        prompts = [format_prompt(q, c) for q, c in zip(part["question"], part["choices"])]
        first = backend.generate(prompts, greedy)
        rest = backend.generate(prompts, sampled) if sampled else [[] for _ in prompts]
        for (_, question), g0, gk in zip(part.iterrows(), first, rest):
            rows += to_rows(question, role, g0 + gk, 0)
        bar.update(len(part) * cfg.k)
    bar.close()
    return pd.DataFrame(rows)


def measure_latency(backend: GenerationBackend, prompts: list[str], role: str, max_new_tokens: int,
                    n_prompts: int = 8) -> pd.DataFrame:
    """Single-request timings for the deterministic latency model (METRICS.md, SATER's AGL/AROL).

    Batched sampling amortises time over a batch, so it cannot say what one more output token
    costs. Here each prompt is generated alone, once for one token and once in full: the two
    lengths separate prefill (per prompt token) from decode (per output token) in the fit.
    """
    rows = []
    for prompt in prompts[:n_prompts]:
        for limit in (1, max_new_tokens):
            gen = backend.generate([prompt], SamplingParams(max_new_tokens=limit))[0][0]
            rows.append({"model": role, "n_prompt_tokens": gen.n_prompt_tokens,
                         "n_output_tokens": gen.n_output_tokens, "latency_s": gen.latency_s})
    return pd.DataFrame(rows)
