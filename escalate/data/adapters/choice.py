"""Multiple-choice tables: a question, its options (`choices`) and the correct letter (or index)."""

from __future__ import annotations

import json

import pandas as pd

from escalate.config import DataConfig
from escalate.data.adapters.base import DatasetAdapter, DataSourceError, finish, read_table, rename_columns
from escalate.prompts import LETTERS


def _as_json_list(value: object, source: str, row: int) -> str:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise DataSourceError(f"{source}: row {row}: choices is not a JSON list: {value[:60]!r}") from None
    if not isinstance(value, (list, tuple)) and not hasattr(value, "tolist"):
        raise DataSourceError(f"{source}: row {row}: choices must be a list, got {type(value).__name__}")
    return json.dumps([str(v) for v in (value.tolist() if hasattr(value, "tolist") else value)])


def _as_letter(value: object) -> str:
    text = str(value).strip()
    return LETTERS[int(text)] if text.isdigit() and int(text) < len(LETTERS) else text.upper()


class ChoiceAdapter(DatasetAdapter):
    name = "choice"
    grader = "choice"

    def load(self, cfg: DataConfig, seed: int) -> pd.DataFrame:
        source = str(cfg.path)
        raw = read_table(cfg.path, "questions", cfg.columns)  # a CSV's difficulty reads as an int, as in JSONL
        df = rename_columns(raw, cfg.columns, ("question", "choices", "answer"), source)
        df["choices"] = [_as_json_list(v, source, i) for i, v in enumerate(df["choices"])]
        df["answer"] = df["answer"].map(_as_letter)
        return finish(df, cfg, cfg.task or "choice", seed)
