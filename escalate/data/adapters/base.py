"""The dataset adapter interface: turn a source (a generator, a file) into the `questions` table."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from pathlib import Path

import pandas as pd

from escalate.config import DataConfig
from escalate.data.schema import SPLITS


class DataSourceError(ValueError):
    """A dataset file that cannot be read or lacks what the adapter needs; the message names the file."""


class DatasetAdapter(ABC):
    """Produces a questions table (schema.TABLES['questions']) from `DataConfig`."""

    name: str = "base"
    grader: str = "numeric"  # graders.GRADERS key that scores this dataset's answers

    @abstractmethod
    def load(self, cfg: DataConfig, seed: int) -> pd.DataFrame:
        """The questions table, with ids unique and every row assigned a split."""


def read_table(path: str | Path) -> pd.DataFrame:
    """Read JSONL, JSON, CSV or Parquet by extension, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise DataSourceError(f"{path}: no such file")
    readers = {
        ".jsonl": lambda p: pd.read_json(p, lines=True, dtype=False),
        ".json": lambda p: pd.read_json(p, dtype=False),
        ".csv": lambda p: pd.read_csv(p, dtype=str, keep_default_na=False),
        ".parquet": pd.read_parquet,
    }
    if path.suffix not in readers:
        raise DataSourceError(f"{path}: unsupported extension {path.suffix!r}; use one of {', '.join(readers)}")
    try:
        return readers[path.suffix](path)
    except Exception as exc:  # parsers raise many types; all mean "unreadable"
        raise DataSourceError(f"{path}: cannot be read as {path.suffix[1:]}: {exc}") from None


def rename_columns(df: pd.DataFrame, mapping: dict[str, str], required: tuple[str, ...], source: str) -> pd.DataFrame:
    """Apply the profile's column mapping (ours -> theirs) and check the required columns exist."""
    missing = [theirs for theirs in mapping.values() if theirs not in df.columns]
    if missing:
        raise DataSourceError(f"{source}: mapped columns {missing} not found; the file has {list(df.columns)}")
    df = df.rename(columns={theirs: ours for ours, theirs in mapping.items()})
    absent = [c for c in required if c not in df.columns]
    if absent:
        raise DataSourceError(
            f"{source}: needs columns {absent}; the file has {list(df.columns)}. "
            f"Map them in the profile, e.g. data.columns: {{{absent[0]}: <your column>}}"
        )
    return df


def assign_splits(ids: pd.Series, fractions: dict[str, float], seed: int) -> pd.Series:
    """A split per id from a hash of (seed, id): stable whatever the row order, no RNG state."""
    edges, total = [], 0.0
    for split in SPLITS:
        total += fractions.get(split, 0.0)
        edges.append((total, split))

    def pick(value: str) -> str:
        u = int(hashlib.sha256(f"{seed}:{value}".encode()).hexdigest()[:12], 16) / 16**12
        return next((s for edge, s in edges if u < edge), edges[-1][1])

    return ids.astype(str).map(pick)


def finish(df: pd.DataFrame, cfg: DataConfig, task: str, seed: int) -> pd.DataFrame:
    """Fill the optional columns, ids, task and splits the way every file adapter does."""
    df = df.copy()
    if cfg.limit:
        df = df.head(cfg.limit)
    if "id" not in df.columns:
        df["id"] = [f"{task}-{i:05d}" for i in range(len(df))]
    df["task"] = task
    if "split" not in df.columns:
        df["split"] = assign_splits(df["id"], cfg.split_fractions, seed)
    for col in ("difficulty", "choices", "meta"):
        if col not in df.columns:
            df[col] = None
    df["meta"] = df["meta"].map(lambda m: m if m is None or isinstance(m, str) else json.dumps(m))
    return df[["id", "task", "question", "answer", "split", "difficulty", "choices", "meta"]]
