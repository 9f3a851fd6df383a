"""Offline evaluation of routers, or of a cascade's confidence, from a table of per-model correctness.

The table holds one row per prompt with the weak (SLM) and strong (LLM) model's correctness, the shape
of RouteLLM's cached responses (STYLE.md 9): nothing is generated. Each router is fitted on k-1 folds
(with both models' correctness: a router may learn what escalating gains) and scores the held-out
fold, so every row gets an out-of-fold score from a router that never saw it; with a group column,
whole groups are held out together (a question and its paraphrases, a source dataset) so a router
cannot win by recognizing near-duplicates. With a score column instead (an SLM confidence computed
after its answer), that column is the strategy, in cascade mode: the SLM attempt is always paid.
The scores become standard records (unit costs: the SLM costs 1/ratio of the LLM, latencies 0),
curves, and every threshold policy (evaluation/thresholds.py) fitted on one half of the rows and
applied to the other, over resampled halves, with the transfer test across the groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, StratifiedGroupKFold, StratifiedKFold

from escalate.data.adapters.base import DataSourceError, read_table
from escalate.evaluation import curves, metrics, plots, thresholds
from escalate.evaluation.run import (
    EvalSettings,
    build_router,
    calib_picks,
    policy_rows,
    required_args,
    threshold_transfer,
    to_json,
)
from escalate.routers.base import RouterInputs
from escalate.routers.registry import ROUTERS

TABLE_COLUMNS = ("router", "target", "apgr", "cpt50", "cpt80", "auroc", "ece", "togr")
POLICY_COLUMNS = ("router", "policy", "target", "splits", "call_rate", "accuracy_loss", "cost", "met", "violated")
TRANSFER_COLUMNS = ("router", "policy", "calibration", "datasets", "call_rate", "accuracy_loss", "met")
ANALYTIC_RANDOM = "random (analytic)"
_TRUE, _FALSE = {"true", "1", "1.0", "yes"}, {"false", "0", "0.0", "no"}


@dataclass(frozen=True)
class CachedTable:
    """Both models' correctness, and the prompts (to fit routers on) or a score column, one row per prompt."""

    prompts: pd.Series | None
    weak: np.ndarray
    strong: np.ndarray
    groups: pd.Series | None = None
    scores: np.ndarray | None = None
    score_name: str | None = None

    def __len__(self) -> int:
        return len(self.weak)


@dataclass(frozen=True)
class PolicySettings:
    """The threshold policies' targets (evaluation/thresholds.py) and how many calib/test halves to draw."""

    delta: float = 0.02
    budget: float = 0.5
    error_cost: float = 10.0
    risk_epsilon: float = 0.05
    risk_alpha: float = 0.1
    resamples: int = 100


@dataclass
class CachedResult:
    rows: list[dict]
    curves: dict[str, pd.DataFrame]
    a_slm: float
    a_llm: float
    n: int
    folds: int
    seed: int
    policies: list[dict] = field(default_factory=list)
    transfer: list[dict] = field(default_factory=list)
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
    wrong = ~text.isin(_TRUE | _FALSE)
    if wrong.any():
        raise DataSourceError(f"{source}: column {column!r} must hold True/False, found {sorted(set(text[wrong]))[:5]} "
                              f"in rows {np.flatnonzero(wrong)[:5].tolist()}")
    return text.isin(_TRUE).to_numpy()


def _as_score(values: pd.Series, column: str, source: str) -> np.ndarray:
    """Finite numbers; anything else names the column, the rows and their values."""
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(float)
    wrong = ~np.isfinite(numbers)
    if wrong.any():
        rows = np.flatnonzero(wrong)[:5]
        raise DataSourceError(f"{source}: column {column!r} must hold finite numbers, found "
                              f"{[values.iloc[i] for i in rows]} in rows {rows.tolist()}")
    return numbers


def load_table(path: str | Path, prompt_col: str | None, weak_col: str, strong_col: str,
               group_col: str | None = None, score_col: str | None = None) -> CachedTable:
    """Read a CSV, JSONL or Parquet table and pick its columns; errors name the file, the columns and the rows.

    Routers need the prompt column; a score column (cascade mode) needs none. A weak column of one
    class leaves nothing to route, and is refused.
    """
    if prompt_col is None and score_col is None:
        raise ValueError("give a prompt column (to fit routers) or a score column (to evaluate a cascade)")
    df = read_table(path)
    wanted = [c for c in (prompt_col, weak_col, strong_col, group_col, score_col) if c is not None]
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise DataSourceError(f"{path}: no column {missing[0]!r}; the table has {list(df.columns)}")
    if df.empty:
        raise DataSourceError(f"{path}: the table has no rows")
    df = df.reset_index(drop=True)
    prompts = None
    if prompt_col is not None:
        blank = df[prompt_col].isna() | (df[prompt_col].astype(str).str.strip() == "")
        if blank.any():
            raise DataSourceError(f"{path}: column {prompt_col!r} is empty in rows {np.flatnonzero(blank)[:5].tolist()}")
        prompts = df[prompt_col].astype(str)
    weak = _as_bool(df[weak_col], weak_col, str(path))
    if len(np.unique(weak)) < 2:
        raise DataSourceError(f"{path}: column {weak_col!r} is {bool(weak[0])} in every row (rows 0-{len(df) - 1}): "
                              "one class, nothing to route")
    return CachedTable(
        prompts=prompts,
        weak=weak,
        strong=_as_bool(df[strong_col], strong_col, str(path)),
        groups=None if group_col is None else df[group_col].astype(str),
        scores=None if score_col is None else _as_score(df[score_col], score_col, str(path)),
        score_name=score_col,
    )


def fold_indices(table: CachedTable, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index pairs: stratified by SLM correctness, groups never split across folds."""
    n = len(table)
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
    """Router inputs for rows idx; held-out rows carry no samples of either model, so no router can peek."""
    if table.prompts is None:
        raise ValueError("routers need the prompt column; this table was read with a score column only")
    ids = [f"row-{i}" for i in idx]
    questions = pd.DataFrame({"id": ids, "question": table.prompts.iloc[idx].to_numpy()})
    if not with_labels:
        return RouterInputs(questions, pd.DataFrame({"id": [], "sample_idx": [], "correct": []}))
    return RouterInputs(questions, pd.DataFrame({"id": ids, "sample_idx": 0, "correct": table.weak[idx]}),
                        pd.DataFrame({"id": ids, "sample_idx": 0, "correct": table.strong[idx]}))


@dataclass(frozen=True)
class OutOfFold:
    """A router's out-of-fold scores, whether every fold's score is P(SLM correct), and the targets its folds chose."""

    scores: np.ndarray
    is_probability: bool
    targets: str


def out_of_fold_scores(table: CachedTable, name: str, splits: list[tuple[np.ndarray, np.ndarray]],
                       seed: int, target: str = "auto") -> OutOfFold:
    """Every row's score from a router fitted on the other folds (`target` for the routers that take one)."""
    scores = np.full(len(table), np.nan)
    chosen, probability = [], []
    for train, test in splits:
        router = build_router(name, seed=seed, target=target).fit(_inputs(table, train, with_labels=True))
        scores[test] = router.score(_inputs(table, test, with_labels=False))
        chosen.append(getattr(router, "chosen", None) or "-")
        probability.append(router.is_probability)
    counts = pd.Series(chosen).value_counts()
    return OutOfFold(scores, all(probability), ", ".join(f"{t} x{c}" if len(counts) > 1 else t
                                                         for t, c in counts.items()))


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
                    ratio: float = 20.0, n_points: int = 101, target: str = "auto",
                    policy: PolicySettings | None = None, out_dir: Path | None = None) -> CachedResult:
    """APGR, CPT(50%), CPT(80%) and more per router (or for the table's score column), beside analytic random,
    and every threshold policy over resampled calib/test halves (with the transfer test across groups).

    Routers are fitted per fold with `target` (escalate.routers.targets) where they take one. With
    out_dir, writes the call-rate curves, the policies as `curves.json` and `accuracy_vs_call_rate.png`.
    """
    if not ratio > 0:
        raise ValueError(f"ratio must be > 0, got {ratio}")
    policy = policy or PolicySettings()
    if table.scores is not None:
        if routers:
            raise ValueError("a score column is evaluated alone (cascade mode); leave out the routers")
        strategies = {table.score_name or "score": OutOfFold(table.scores, _in_unit_interval(table.scores), "-")}
        mode = "cascade"
    else:
        names = check_router_names(routers or pregen_routers())
        splits = fold_indices(table, folds, seed)
        strategies = {name: out_of_fold_scores(table, name, splits, seed, target) for name in names}
        mode = "pregen"
    a_slm, a_llm = float(table.weak.mean()), float(table.strong.mean())
    rows, curve_map, policies, transfer = [], {}, [], []
    refs = None
    for name, oof in strategies.items():
        records = records_for(table, oof.scores, ratio)
        refs = curves.reference_points(records) if refs is None else refs
        curve_map[name] = curves.sweep(records, mode, n_points)
        summary = curves.summarize(records, mode, a_slm=a_slm, a_llm=a_llm, delta=policy.delta, n_points=n_points,
                                   is_probability=oof.is_probability, curve=curve_map[name])
        rows.append({"router": name, "target": oof.targets, **summary})
        resampled = resampled_policies(name, mode, records, table.groups, policy, n_points, seed)
        policies += resampled[0]
        transfer += resampled[1]
    random = curves.random_curve(a_slm, a_llm, 1.0 / ratio, n_points)
    curve_map[ANALYTIC_RANDOM] = random
    rows.append({"router": ANALYTIC_RANDOM, "target": "-", "apgr": metrics.apgr(random, a_slm, a_llm),
                 "cpt50": metrics.cpt(random, 0.5, a_slm, a_llm), "cpt80": metrics.cpt(random, 0.8, a_slm, a_llm),
                 "auroc": 0.5, "togr": 0.0})
    result = CachedResult(rows, curve_map, a_slm, a_llm, len(table), folds, seed, policies, transfer)
    if out_dir is not None:
        result.files = write_outputs(result, refs, Path(out_dir))
    return result


def _in_unit_interval(scores: np.ndarray) -> bool:
    """A confidence in [0, 1] is read as P(SLM correct), so its calibration (ECE) is reported."""
    return bool(np.all((scores >= 0) & (scores <= 1)))


def resampled_policies(name: str, mode: str, records: pd.DataFrame, groups: pd.Series | None,
                       policy: PolicySettings, n_points: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Each threshold policy fitted on a random half of the rows and applied to the other, `resamples` times.

    Per policy: the mean test call rate, accuracy loss and cost, the share of draws meeting the target
    (`met`) and its complement (`violated`; for the risk policy, the rate its guarantee bounds by α).
    With groups, run.threshold_transfer on every draw too: each group held out, thresholds fitted
    on its own calib half, on a balanced mixture of the others', or on each other one's.
    """
    if policy.resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {policy.resamples}")
    settings = EvalSettings(split="test", delta=policy.delta, n_points=n_points, seed=seed, profile="cached",
                            budget=policy.budget, error_cost=policy.error_cost, risk_epsilon=policy.risk_epsilon,
                            risk_alpha=policy.risk_alpha)
    questions = None if groups is None else pd.DataFrame(
        {"id": records["id"], "task": groups.to_numpy(), "difficulty": np.nan})
    rng = np.random.default_rng(seed)
    n = len(records)
    drawn, moved = [], []
    for _ in range(policy.resamples):
        order = rng.permutation(n)
        calib, test = records.iloc[np.sort(order[: n // 2])], records.iloc[np.sort(order[n // 2:])]
        picks = calib_picks(calib, mode, settings)
        drawn += policy_rows(name, picks, thresholds.Outcomes.from_records(test, mode), settings)
        if questions is not None:
            moved += threshold_transfer(name, mode, calib, test, questions, settings)
    return _mean_by(drawn, ["policy", "target"], "splits"), _mean_by(moved, ["policy", "calibration", "datasets"])


def _mean_by(rows: list[dict], keys: list[str], count: str | None = None) -> list[dict]:
    """One row per key combination: the mean of its figures over draws (`met` as a share, None where undefined)."""
    if not rows:
        return []
    frame = pd.DataFrame(rows).rename(columns={"strategy": "router"})
    out = []
    for key, part in frame.groupby(["router", *keys], sort=False):
        met = part["met"].dropna().astype(float)
        row = dict(zip(["router", *keys], key))
        row.update({c: float(part[c].mean()) for c in ("call_rate", "accuracy_loss", "cost") if c in part})
        row.update({"met": float(met.mean()) if len(met) else None,
                    **({"violated": 1.0 - float(met.mean()) if len(met) else None} if count else {})})
        if count:
            row[count] = len(part)
        out.append(row)
    return out


def write_outputs(result: CachedResult, refs: pd.DataFrame | None, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"n": result.n, "folds": result.folds, "seed": result.seed, "a_slm": result.a_slm,
               "a_llm": result.a_llm, "summary": result.rows, "policies": result.policies, "transfer": result.transfer,
               "curves": {k: v.to_dict(orient="list") for k, v in result.curves.items()}}
    curves_json = out_dir / "curves.json"
    curves_json.write_text(to_json(payload))
    png = plots.plot_accuracy_vs_call_rate(result.curves, refs, out_dir / "accuracy_vs_call_rate.png",
                                           split=f"{result.folds}-fold out-of-fold, seed {result.seed}")
    return {"json": curves_json, "png": png}

