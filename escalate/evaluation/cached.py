"""Offline evaluation of every pre-generation router from a table of prompts and per-model correctness.

The table holds one row per prompt with the weak (SLM) and strong (LLM) model's correctness, the shape
of RouteLLM's cached responses (STYLE.md 9): nothing is generated. Each router is fitted on k-1 folds
and scores the held-out fold, so every row gets an out-of-fold score from a router that never saw it;
with a group column, whole groups are held out together (a question and its paraphrases, a source
dataset) so a router cannot win by recognizing near-duplicates. The out-of-fold scores become
standard records (unit costs: the SLM costs 1/ratio of the LLM, latencies 0) and curves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, StratifiedGroupKFold, StratifiedKFold

from escalate.data.adapters.base import DataSourceError, read_table
from escalate.evaluation import curves, metrics, plots
from escalate.evaluation.run import build_router, required_args, to_json
from escalate.routers.base import RouterInputs
from escalate.routers.registry import ROUTERS

TABLE_COLUMNS = ("router", "apgr", "cpt50", "cpt80", "auroc", "ece", "togr")
ANALYTIC_RANDOM = "random (analytic)"
_TRUE, _FALSE = {"true", "1", "1.0", "yes"}, {"false", "0", "0.0", "no"}


@dataclass(frozen=True)
class CachedTable:
    """The prompts, both models' correctness and the optional groups, one row per prompt."""

    prompts: pd.Series
    weak: np.ndarray
    strong: np.ndarray
    groups: pd.Series | None = None


@dataclass
class CachedResult:
    rows: list[dict]
    curves: dict[str, pd.DataFrame]
    a_slm: float
    a_llm: float
    n: int
    folds: int
    seed: int
    files: dict[str, Path] = field(default_factory=dict)


def pregen_routers() -> list[str]:
    """Routers that decide from the prompt alone: pre-generation ones that need no SLM checkpoint."""
    return [name for name, cls in ROUTERS.items() if cls.mode == "pregen" and not required_args(name)]


def check_router_names(names: list[str]) -> list[str]:
    """Only pre-generation routers can be evaluated from prompts alone; say which exist."""
    known = pregen_routers()
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise ValueError(f"unknown or non-pre-generation routers {bad}; choose from {', '.join(known)}")
    return names


def _as_bool(values: pd.Series, column: str, source: str) -> np.ndarray:
    """True/False, 1/0 or yes/no (any case) as booleans; anything else names the column and values."""
    if values.dtype == bool:
        return values.to_numpy(bool)
    text = values.astype(str).str.strip().str.lower()
    bad = sorted(set(text[~text.isin(_TRUE | _FALSE)]))
    if bad:
        raise DataSourceError(f"{source}: column {column!r} must hold True/False, found {bad[:5]}")
    return text.isin(_TRUE).to_numpy()


def load_table(path: str | Path, prompt_col: str, weak_col: str, strong_col: str,
               group_col: str | None = None) -> CachedTable:
    """Read a CSV, JSONL or Parquet table and pick its columns; errors name the file and the columns."""
    df = read_table(path)
    wanted = [c for c in (prompt_col, weak_col, strong_col, group_col) if c is not None]
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise DataSourceError(f"{path}: no column {missing[0]!r}; the table has {list(df.columns)}")
    if df.empty:
        raise DataSourceError(f"{path}: the table has no rows")
    blank = df[prompt_col].isna() | (df[prompt_col].astype(str).str.strip() == "")
    if blank.any():
        raise DataSourceError(f"{path}: column {prompt_col!r} is empty in rows {list(np.flatnonzero(blank)[:5])}")
    return CachedTable(
        prompts=df[prompt_col].astype(str).reset_index(drop=True),
        weak=_as_bool(df[weak_col], weak_col, str(path)),
        strong=_as_bool(df[strong_col], strong_col, str(path)),
        groups=None if group_col is None else df[group_col].astype(str).reset_index(drop=True),
    )


def fold_indices(table: CachedTable, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index pairs: stratified by SLM correctness, groups never split across folds."""
    n = len(table.prompts)
    if folds < 2 or folds > n:
        raise ValueError(f"folds must be between 2 and the number of rows ({n}), got {folds}")
    index = np.zeros(n)
    if table.groups is not None:
        n_groups = table.groups.nunique()
        if folds > n_groups:
            raise ValueError(f"folds ({folds}) exceed the number of groups ({n_groups})")
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        return list(splitter.split(index, table.weak, table.groups))
    if min(table.weak.sum(), (~table.weak).sum()) >= folds:
        return list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(index, table.weak))
    return list(KFold(n_splits=folds, shuffle=True, random_state=seed).split(index))


def _inputs(table: CachedTable, idx: np.ndarray, *, with_labels: bool) -> RouterInputs:
    """Router inputs for rows idx; held-out rows carry no SLM samples, so no router can peek."""
    ids = [f"row-{i}" for i in idx]
    questions = pd.DataFrame({"id": ids, "question": table.prompts.iloc[idx].to_numpy()})
    samples = pd.DataFrame({"id": ids, "sample_idx": 0, "correct": table.weak[idx]} if with_labels
                           else {"id": [], "sample_idx": [], "correct": []})
    return RouterInputs(questions, samples)


def out_of_fold_scores(table: CachedTable, name: str, splits: list[tuple[np.ndarray, np.ndarray]],
                       seed: int) -> np.ndarray:
    """Every row's score from a router fitted on the other folds."""
    scores = np.full(len(table.prompts), np.nan)
    for train, test in splits:
        router = build_router(name, seed=seed).fit(_inputs(table, train, with_labels=True))
        scores[test] = router.score(_inputs(table, test, with_labels=False))
    return scores


def records_for(table: CachedTable, scores: np.ndarray, ratio: float) -> pd.DataFrame:
    """The evaluation.metrics record contract with unit costs (LLM 1, SLM 1/ratio) and no latency."""
    n = len(scores)
    zeros = np.zeros(n)
    return pd.DataFrame({
        "id": np.arange(n), "score": scores, "slm_correct": table.weak, "llm_correct": table.strong,
        "slm_cost": np.full(n, 1.0 / ratio), "llm_cost": np.ones(n), "router_cost": zeros,
        "slm_latency_s": zeros, "llm_latency_s": zeros, "slm_latency_model_s": zeros, "llm_latency_model_s": zeros,
        "router_latency_s": zeros, "router_latency_model_s": zeros,
    })


def evaluate_cached(table: CachedTable, routers: list[str] | None = None, *, folds: int = 5, seed: int = 0,
                    ratio: float = 20.0, n_points: int = 101, out_dir: Path | None = None) -> CachedResult:
    """APGR, CPT(50%), CPT(80%) and more per router from out-of-fold scores, beside analytic random.

    With out_dir, writes the call-rate curves as `curves.json` and `accuracy_vs_call_rate.png`.
    """
    names = check_router_names(routers or pregen_routers())
    if not ratio > 0:
        raise ValueError(f"ratio must be > 0, got {ratio}")
    splits = fold_indices(table, folds, seed)
    a_slm, a_llm = float(table.weak.mean()), float(table.strong.mean())
    rows, curve_map = [], {}
    refs = None
    for name in names:
        records = records_for(table, out_of_fold_scores(table, name, splits, seed), ratio)
        refs = curves.reference_points(records) if refs is None else refs
        curve_map[name] = curves.sweep(records, "pregen", n_points)
        summary = curves.summarize(records, "pregen", a_slm=a_slm, a_llm=a_llm, n_points=n_points,
                                   is_probability=ROUTERS[name].is_probability, curve=curve_map[name])
        rows.append({"router": name, **summary})
    random = curves.random_curve(a_slm, a_llm, 1.0 / ratio, n_points)
    curve_map[ANALYTIC_RANDOM] = random
    rows.append({"router": ANALYTIC_RANDOM, "apgr": metrics.apgr(random, a_slm, a_llm),
                 "cpt50": metrics.cpt(random, 0.5, a_slm, a_llm), "cpt80": metrics.cpt(random, 0.8, a_slm, a_llm),
                 "auroc": 0.5, "togr": 0.0})
    result = CachedResult(rows, curve_map, a_slm, a_llm, len(table.prompts), folds, seed)
    if out_dir is not None:
        result.files = write_outputs(result, refs, Path(out_dir))
    return result


def write_outputs(result: CachedResult, refs: pd.DataFrame | None, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"n": result.n, "folds": result.folds, "seed": result.seed, "a_slm": result.a_slm,
               "a_llm": result.a_llm, "summary": result.rows,
               "curves": {k: v.to_dict(orient="list") for k, v in result.curves.items()}}
    curves_json = out_dir / "curves.json"
    curves_json.write_text(to_json(payload))
    png = plots.plot_accuracy_vs_call_rate(result.curves, refs, out_dir / "accuracy_vs_call_rate.png",
                                           split=f"{result.folds}-fold out-of-fold, seed {result.seed}")
    return {"json": curves_json, "png": png}

