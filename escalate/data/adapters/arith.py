"""The built-in `arith` generator as a dataset: train / calib / test with no question in two splits."""

from __future__ import annotations

import json

import pandas as pd

from escalate.config import DataConfig
from escalate.data import arith
from escalate.data.adapters.base import DatasetAdapter


class ArithAdapter(DatasetAdapter):
    name = "arith"
    grader = "numeric"

    def load(self, cfg: DataConfig, seed: int) -> pd.DataFrame:
        a = cfg.arith
        sizes = {"test": a.n_test, "calib": a.n_calib, "train": a.n_train}
        seen: set[str] = set()
        rows = []
        for offset, (split, n) in enumerate(sizes.items()):
            # Over-generate, then keep each question once across all splits.
            problems = arith.generate(2 * n + 50, seed * 1000 + offset, a.min_steps, a.max_steps, a.max_operand)
            kept = []
            for p in problems:
                if len(kept) < n and p.question() not in seen:
                    kept.append(p)
                    seen.add(p.question())
            for i, p in enumerate(kept):
                rows.append({
                    "id": f"arith-{split}-{i:05d}", "task": "arith", "question": p.question(),
                    "answer": str(p.answer), "split": split, "difficulty": p.difficulty, "choices": None,
                    "meta": json.dumps({s: p.solution(s) for s in arith.STYLES}),
                })
        return pd.DataFrame(rows)
