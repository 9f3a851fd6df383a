"""Any JSONL / CSV / Parquet table with a question and an answer column (names mapped in the profile)."""

from __future__ import annotations

import pandas as pd

from escalate.config import DataConfig
from escalate.data.adapters.base import DatasetAdapter, finish, read_table, rename_columns


class TableAdapter(DatasetAdapter):
    name = "table"
    grader = "numeric"

    def load(self, cfg: DataConfig, seed: int) -> pd.DataFrame:
        df = read_table(cfg.path, "questions", cfg.columns)
        df = rename_columns(df, cfg.columns, ("question", "answer"), str(cfg.path))
        df["answer"] = df["answer"].astype(str)
        return finish(df, cfg, cfg.task or "table", seed)
