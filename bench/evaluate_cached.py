"""Benchmark `escalate routers evaluate-cached`: issue 17's table per router and label on real tables, and time.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/evaluate_cached.py [--table PATH ...] [--targets slm_correct,gain,auto]
        [--routers a,b] [--resamples 100] [--rows 15000] [--seed 0]

Per table, router and label (the target a learned router is fitted on: `slm_correct`, `gain`, `auto`;
routers that take no target run once, label `-`): APGR, CPT(50), CPT(80), AUROC, TOGR from 5-fold
out-of-fold scores, and the Learn-then-Test risk policy (accuracy loss <= epsilon w.p. >= 1 - alpha)
fitted on a random half of the rows and applied to the other, `--resamples` times: its violation rate,
which its guarantee bounds by alpha, beside the plug-in accuracy policy's. Then, with --rows > 0, the time
on a table of that many rows: the first table repeated with each copy's prompts perturbed (a numbered
prefix and shuffled sentence order), so every prompt is distinct and must be encoded (--rows 0 skips it).
Writes bench/results/evaluate_cached.md; curves and PNGs go under bench/results/*.tmp/ (git-ignored).
"""

from __future__ import annotations

import argparse
import inspect
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from machine import commit, cpu_model  # bench/machine.py: the script's own directory is on sys.path

from escalate.evaluation.cached import (
    ANALYTIC_RANDOM,
    TABLE_COLUMNS,
    CachedTable,
    PolicySettings,
    evaluate_cached,
    load_table,
    pregen_routers,
)
from escalate.evaluation.report import markdown_table
from escalate.routers.registry import ROUTERS
from escalate.routers.targets import CHOICES

WEAK, STRONG = "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"
DEFAULT_TABLE = "/work/shared/data/routellm/gsm8k_responses.csv"
LABELS = ("slm_correct", "gain", "auto")
ISSUE17_COLUMNS = ("router", "label", "folds_chose", "apgr", "cpt50", "cpt80", "auroc", "togr", "risk_call_rate",
                   "risk_accuracy_loss", "risk_violated", "accuracy_violated")


def takes_target(name: str) -> bool:
    return "target" in inspect.signature(ROUTERS[name]).parameters


def _policy(result_policies: list[dict], policy: str) -> dict[str, dict]:
    return {r["router"]: r for r in result_policies if r["policy"] == policy}


def issue17_rows(table: CachedTable, routers: list[str], labels: tuple[str, ...], folds: int, seed: int,
                 policy: PolicySettings, out: Path | None = None) -> list[dict]:
    """One row per router and label (routers without a target: once, label `-`), analytic random last.

    `folds_chose` is the target each fold's router ended up with (`auto` picks one per fold on inner folds).
    """
    bad = [label for label in labels if label not in CHOICES]
    if bad or not labels:
        raise ValueError(f"--targets: unknown or empty {bad or labels}; choose from {', '.join(CHOICES)}")
    rows, random_row = [], None
    for i, label in enumerate(labels):
        names = [n for n in routers if takes_target(n) or i == 0]
        if not names:
            continue
        result = evaluate_cached(table, names, folds=folds, seed=seed, target=label, policy=policy,
                                 out_dir=None if out is None else out / label)
        risk, accuracy = _policy(result.policies, "risk"), _policy(result.policies, "accuracy")
        for row in result.rows:
            name = row["router"]
            if name == ANALYTIC_RANDOM:
                random_row = {"router": name, "label": "-", "folds_chose": "-",
                              **{k: row[k] for k in ("apgr", "cpt50", "cpt80", "auroc", "togr")}}
                continue
            r = risk.get(name, {})
            rows.append({"router": name, "label": label if takes_target(name) else "-", "folds_chose": row["target"],
                         **{k: row[k] for k in ("apgr", "cpt50", "cpt80", "auroc", "togr")},
                         "risk_call_rate": r.get("call_rate"), "risk_accuracy_loss": r.get("accuracy_loss"),
                         "risk_violated": r.get("violated"),
                         "accuracy_violated": accuracy.get(name, {}).get("violated")})
    return rows + ([random_row] if random_row else [])


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


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", nargs="+", default=[DEFAULT_TABLE], help="RouteLLM-shaped tables (prompt, "
                        f"{WEAK}, {STRONG} columns)")
    parser.add_argument("--routers", type=_names, default=pregen_routers())
    parser.add_argument("--targets", type=lambda t: tuple(_names(t)), default=LABELS)
    parser.add_argument("--resamples", type=int, default=PolicySettings.resamples,
                        help="calib/test halves drawn for the threshold policies")
    parser.add_argument("--rows", type=int, default=15000, help="rows of the timing table (0: skip it)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    policy = PolicySettings(resamples=args.resamples)

    lines = [
        "# evaluate-cached benchmark",
        "",
        f"<!-- written by `python bench/evaluate_cached.py --table {' '.join(args.table)} --routers "
        f"{','.join(args.routers)} --targets {','.join(args.targets)} --resamples {args.resamples} --rows {args.rows} "
        f"--folds {args.folds} --seed {args.seed}` -->",
        "",
        f"- **commit:** {commit()}",
        f"- **folds:** {args.folds} (stratified, out-of-fold scores), **seed:** {args.seed}",
        "- **cost model:** unit costs, LLM 1, SLM 1/20; latencies 0",
        f"- **machine:** {cpu_model()}, {os.cpu_count()} CPUs visible, torch threads {torch.get_num_threads()}, load average "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())} at the start",
        f"- **risk policy:** accuracy loss vs LLM-only <= {policy.risk_epsilon:g} w.p. >= {1 - policy.risk_alpha:g} "
        f"(alpha = {policy.risk_alpha:g}), fitted on a random half of the rows, applied to the other, "
        f"{policy.resamples} draws; `accuracy` is the plug-in policy (loss <= delta = {policy.delta:g})",
        "",
    ]
    base = None
    for path in args.table:
        table = load_table(path, "prompt", WEAK, STRONG)
        base = table if base is None else base
        start = time.perf_counter()
        rows = issue17_rows(table, args.routers, args.targets, args.folds, args.seed, policy,
                            args.out / f"evaluate_cached_{Path(path).stem}.tmp")
        seconds = time.perf_counter() - start
        lines += [
            f"## Issue 17: {Path(path).name}, {len(table)} rows (weak {WEAK}, strong {STRONG}), {seconds:.0f} s",
            "",
            f"A_SLM {table.weak.mean():.3f}, A_LLM {table.strong.mean():.3f}. Target: best router APGR >= 0.66. "
            "`label`: the target the router is fitted on (`-`: the router takes none); `folds_chose`: what each "
            "fold's router used (`auto` chooses on inner folds of its training part). AUROC is against SLM "
            "correctness, so it understates a gain-ranked score. `risk_violated`: the share of draws where the "
            "risk policy lost more than epsilon on the held-out half (its guarantee: <= alpha); "
            "`accuracy_violated`: the same for the plug-in accuracy policy.",
            "",
            markdown_table(rows, ISSUE17_COLUMNS),
            "",
        ]
    if args.rows > 0 and base is not None:
        big = perturbed(base, args.rows, args.seed)
        start = time.perf_counter()
        big_rows = evaluate_cached(big, folds=args.folds, seed=args.seed,
                                   out_dir=args.out / "evaluate_cached_15k.tmp").rows
        lines += [
            f"## {args.rows} rows ({Path(args.table[0]).name} repeated, prompts perturbed, copies of a question held "
            f"out together): {time.perf_counter() - start:.0f} s",
            "",
            "Target: within 600 s on 2 cores. Figures here are not a quality measure (copies share labels).",
            "",
            markdown_table(big_rows, list(TABLE_COLUMNS)),
            "",
        ]
    else:
        lines += ["The timing on a large perturbed table was not run (--rows 0).", ""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "evaluate_cached.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
