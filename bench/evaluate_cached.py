"""Benchmark `escalate routers evaluate-cached`: figures on RouteLLM's GSM8K table and time on 15,000 rows.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/evaluate_cached.py [--table PATH] [--rows 15000] [--seed 0]

Writes bench/results/evaluate_cached.md; curves and PNGs go under bench/results/*.tmp/ (git-ignored).
The large table is the GSM8K table repeated with each copy's
prompts perturbed (a numbered prefix and shuffled sentence order), so every prompt is distinct and must
be encoded: the time includes embedding all 15,000 prompts on CPU, not only the classifiers.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from escalate.evaluation.cached import TABLE_COLUMNS, CachedTable, evaluate_cached, load_table
from escalate.evaluation.report import markdown_table

WEAK, STRONG = "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"
DEFAULT_TABLE = "/work/shared/data/routellm/gsm8k_responses.csv"


def perturbed(table: CachedTable, rows: int, seed: int) -> CachedTable:
    """`rows` rows cycling through the table; copies after the first get reordered sentences and a tag."""
    rng = np.random.default_rng(seed)
    idx = np.arange(rows) % len(table.prompts)
    prompts = []
    for i, j in enumerate(idx):
        text = table.prompts.iloc[j]
        if i >= len(table.prompts):
            sentences = [s for s in text.split(". ") if s]
            head, tail = sentences[:-1], sentences[-1:]
            rng.shuffle(head)
            text = f"Problem {i}: " + ". ".join(head + tail)
        prompts.append(text)
    return CachedTable(pd.Series(prompts), table.weak[idx], table.strong[idx],
                       pd.Series(idx.astype(str)))  # a question and its copies form one group


def timed(table: CachedTable, folds: int, seed: int, out: Path) -> tuple[list[dict], float]:
    start = time.perf_counter()
    result = evaluate_cached(table, folds=folds, seed=seed, out_dir=out)
    return result.rows, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", default=DEFAULT_TABLE)
    parser.add_argument("--rows", type=int, default=15000)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    base = load_table(args.table, "prompt", WEAK, STRONG)
    gsm_rows, gsm_s = timed(base, args.folds, args.seed, args.out / "evaluate_cached_gsm8k.tmp")
    big = perturbed(base, args.rows, args.seed)
    big_rows, big_s = timed(big, args.folds, args.seed, args.out / "evaluate_cached_15k.tmp")

    lines = [
        "# evaluate-cached benchmark",
        "",
        f"- **table:** {args.table} (weak {WEAK}, strong {STRONG})",
        f"- **folds:** {args.folds} (stratified, out-of-fold scores), **seed:** {args.seed}",
        "- **cost model:** unit costs, LLM 1, SLM 1/20; latencies 0",
        f"- **machine:** {os.cpu_count()} CPUs visible, torch threads {torch.get_num_threads()}",
        "",
        f"## GSM8K table: {len(base.prompts)} rows, {gsm_s:.0f} s (includes loading the encoder)",
        "",
        f"A_SLM {base.weak.mean():.3f}, A_LLM {base.strong.mean():.3f}. Target: best router APGR >= 0.66 (issue 17).",
        "",
        markdown_table(gsm_rows, list(TABLE_COLUMNS)),
        "",
        f"## {args.rows} rows (GSM8K repeated, prompts perturbed, copies of a question held out together): "
        f"{big_s:.0f} s",
        "",
        "Target: within 600 s on 2 cores. Figures here are not a quality measure (copies share labels).",
        "",
        markdown_table(big_rows, list(TABLE_COLUMNS)),
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "evaluate_cached.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
