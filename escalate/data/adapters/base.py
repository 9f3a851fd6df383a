"""The dataset adapter interface: turn a source (a generator, a file) into the `questions` table."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from escalate.config import DataConfig
from escalate.data.schema import SPLITS, Column, columns


class DataSourceError(ValueError):
    """A dataset file that cannot be read or lacks what the adapter needs; the message names the file."""


class DatasetAdapter(ABC):
    """Produces a questions table (schema.TABLES['questions']) from `DataConfig`."""

    name: str = "base"
    grader: str = "numeric"  # graders.GRADERS key that scores this dataset's answers

    @abstractmethod
    def load(self, cfg: DataConfig, seed: int) -> pd.DataFrame:
        """The questions table, with ids unique and every row assigned a split."""


def _float(text: str) -> Any:
    """The number, or the text itself when it is none: validation then reports it, value and all."""
    try:
        return float(text)
    except ValueError:
        return text


def _int(text: str) -> Any:
    """The int; "1.0" too, as pandas writes an int column with nulls; else what _float makes of it."""
    try:
        return int(text)
    except ValueError:
        value = _float(text)
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


_CSV_PARSERS: dict[str, Callable[[str], Any]] = {
    "str": str,
    "int": _int,
    "float": _float,
    "bool": lambda text: {"true": True, "false": False}.get(text.strip().lower(), text),
    "list[float]": _json,
    "list[int]": _json,
}


def _csv_column(cells: pd.Series, col: Column) -> pd.Series:
    """One CSV column (all text) as its contract's kind; an empty cell is null, except in a
    non-nullable text column, where it stays "" for the non-empty rule to report."""
    parse = _CSV_PARSERS[col.kind]
    keep_empty = col.kind == "str" and not col.nullable
    values = [None if cell == "" and not keep_empty else parse(cell) for cell in cells]
    return pd.Series(values, index=cells.index, dtype=object)  # built, not mapped: map makes ints floats


def read_table(path: str | Path, table: str | None = None, mapping: dict[str, str] | None = None) -> pd.DataFrame:
    """Read JSONL, JSON, CSV or Parquet by extension, with errors that name the file.

    A CSV holds only text: with `table`, the columns its contract names (found under the file's
    names through `mapping`, ours -> theirs) get the contract's types, so "042" stays a string,
    difficulty is an int and an empty optional cell is null, as the other formats read them.
    Other columns stay text; without `table` every column does.
    """
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
        df = readers[path.suffix](path)
    except Exception as exc:  # parsers raise many types; all mean "unreadable"
        raise DataSourceError(f"{path}: cannot be read as {path.suffix[1:]}: {exc}") from None
    if path.suffix != ".csv" or table is None:
        return df
    names = {(mapping or {}).get(col.name, col.name): col for col in columns(table)}
    return df.assign(**{name: _csv_column(df[name], col) for name, col in names.items() if name in df.columns})


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
