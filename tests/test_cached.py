"""evaluate-cached on small tables written here: figures, files, errors and group-held-out folds."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from escalate.cli import main
from escalate.data.adapters.base import DataSourceError
from escalate.evaluation.cached import (
    ANALYTIC_RANDOM,
    CachedTable,
    PolicySettings,
    evaluate_cached,
    fold_indices,
    load_table,
)


def toy_table(n: int = 120, seed: int = 0) -> pd.DataFrame:
    """The weak model fails the long prompts; the strong one fails every tenth prompt."""
    rng = np.random.default_rng(seed)
    long = np.arange(n) % 3 == 0
    prompts = [("Explain in detail, step by step and with care, " * 4 if is_long else "Add ") + f"{rng.integers(999)}"
               for is_long in long]
    return pd.DataFrame({"prompt": prompts, "weak": ~long, "strong": np.arange(n) % 10 != 9,
                         "source": [f"g{i % 12}" for i in range(n)]})


def write(df: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_json(path, orient="records", lines=True)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_cli_prints_the_table_and_writes_curves(tmp_path: Path, suffix: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    table = write(toy_table(), tmp_path / f"cached{suffix}")
    out = tmp_path / "out"
    code = main(["routers", "evaluate-cached", "--table", str(table), "--prompt-col", "prompt", "--weak-col", "weak",
                 "--strong-col", "strong", "--routers", "prompt_length,random", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "prompt_length" in printed and ANALYTIC_RANDOM in printed and "apgr" in printed
    stored = json.loads((out / "curves.json").read_text())
    rows = {row["router"]: row for row in stored["summary"]}
    assert rows["prompt_length"]["apgr"] > 0.9  # length explains every weak-model failure
    assert rows[ANALYTIC_RANDOM]["apgr"] == pytest.approx(0.5)
    assert 0.3 < rows["random"]["apgr"] < 0.7
    assert stored["folds"] == 5 and stored["n"] == 120
    assert set(stored["curves"]) == {"prompt_length", "random", ANALYTIC_RANDOM}
    assert (out / "accuracy_vs_call_rate.png").stat().st_size > 1000


def test_embedding_router_learns_from_cached_rows() -> None:
    df = toy_table(60)
    df["prompt"] = np.where(df["weak"], "Count the apples in basket ", "Integrate the trigonometric function ") + \
        df.index.astype(str)
    table = CachedTable(df["prompt"], df["weak"].to_numpy(bool), df["strong"].to_numpy(bool))
    result = evaluate_cached(table, ["embedding_lr", "embedding_knn", "embedding_mlp"], folds=3)
    for row in result.rows[:3]:
        assert row["auroc"] > 0.95 and row["apgr"] > 0.9, row["router"]


def test_bad_column_exits_2_naming_it_and_listing_the_columns(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    table = write(toy_table(), tmp_path / "cached.csv")
    code = main(["routers", "evaluate-cached", "--table", str(table), "--prompt-col", "prompt", "--weak-col", "mixtral",
                 "--strong-col", "strong"])
    err = capsys.readouterr().err
    assert code == 2
    assert "no column 'mixtral'" in err and "['prompt', 'weak', 'strong', 'source']" in err
    assert len(err.strip().splitlines()) == 1


def test_unreadable_table_and_bad_values_name_the_file_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n")
    with pytest.raises(DataSourceError, match="bad.jsonl"):
        load_table(bad, "prompt", "weak", "strong")
    df = toy_table()
    df["weak"] = "maybe"
    with pytest.raises(DataSourceError, match="'weak' must hold True/False"):
        load_table(write(df, tmp_path / "t.csv"), "prompt", "weak", "strong")


def test_unknown_router_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = write(toy_table(), tmp_path / "cached.csv")
    code = main(["routers", "evaluate-cached", "--table", str(table), "--prompt-col", "prompt", "--weak-col", "weak",
                 "--strong-col", "strong", "--routers", "p_true_token"])
    assert code == 2 and "prompt_length" in capsys.readouterr().err


def test_group_folds_keep_groups_apart_and_cover_every_row(tmp_path: Path) -> None:
    table = load_table(write(toy_table(), tmp_path / "t.csv"), "prompt", "weak", "strong", group_col="source")
    splits = fold_indices(table, 4, seed=0)
    held_out = np.concatenate([test for _, test in splits])
    assert sorted(held_out) == list(range(120))
    for train, test in splits:
        assert not set(table.groups.iloc[train]) & set(table.groups.iloc[test])
    with pytest.raises(ValueError, match="exceed the number of groups"):
        fold_indices(table, 13, seed=0)


def test_plain_folds_are_seeded_and_stratified(tmp_path: Path) -> None:
    table = load_table(write(toy_table(), tmp_path / "t.csv"), "prompt", "weak", "strong")
    a, b = fold_indices(table, 5, seed=3), fold_indices(table, 5, seed=3)
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    assert {int(table.weak[test].sum()) for _, test in a} == {16}  # 80 weak-correct rows, 16 per fold


def cascade_table(n: int = 200, seed: int = 0) -> pd.DataFrame:
    """An SLM confidence that is higher where the SLM is right, in four datasets."""
    rng = np.random.default_rng(seed)
    weak = rng.random(n) < 0.6
    return pd.DataFrame({"weak": weak, "strong": rng.random(n) < 0.9,
                         "conf": np.clip(np.where(weak, 0.7, 0.4) + rng.normal(0, 0.15, n), 0, 1),
                         "dataset": [f"d{i % 4}" for i in range(n)]})


def test_score_column_is_a_cascade_with_every_policy_and_the_transfer_test(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = write(cascade_table(), tmp_path / "cascade.csv")
    out = tmp_path / "out"
    code = main(["routers", "evaluate-cached", "--table", str(table), "--score-col", "conf", "--weak-col", "weak",
                 "--strong-col", "strong", "--group-col", "dataset", "--resamples", "20", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "cascade on column 'conf'" in printed and "threshold transfer" in printed
    stored = json.loads((out / "curves.json").read_text())
    rows = {row["router"]: row for row in stored["summary"]}
    assert rows["conf"]["auroc"] > 0.8 and rows["conf"]["apgr"] > 0.6 and rows["conf"]["ece"] == rows["conf"]["ece"]
    policies = {row["policy"]: row for row in stored["policies"]}
    assert set(policies) == {"accuracy", "budget", "cost", "risk"}
    assert all(row["splits"] == 20 for row in policies.values())
    assert policies["cost"]["met"] is None
    assert policies["risk"]["violated"] == pytest.approx(1 - policies["risk"]["met"])
    assert policies["budget"]["call_rate"] < 0.6  # fitted to at most half on calib halves
    calibrations = {(row["policy"], row["calibration"]) for row in stored["transfer"]}
    assert calibrations == {(p, c) for p in ("budget", "accuracy") for c in ("in-domain", "constructed",
                                                                               "single source")}
    assert all(row["datasets"] == 4 for row in stored["transfer"])


def test_a_cascade_pays_the_slm_attempt_on_every_escalation() -> None:
    df = cascade_table()
    cascade = CachedTable(None, df["weak"].to_numpy(bool), df["strong"].to_numpy(bool),
                          scores=df["conf"].to_numpy(float), score_name="conf")
    result = evaluate_cached(cascade, policy=PolicySettings(resamples=5))
    llm_only = result.curves["conf"].iloc[-1]
    assert llm_only["call_rate"] == 1.0 and llm_only["cost"] == pytest.approx(1.05)  # SLM (1/20) + LLM (1)
    with pytest.raises(ValueError, match="evaluated alone"):
        evaluate_cached(cascade, ["random"])


@pytest.mark.parametrize(("column", "value", "message"), [
    ("conf", "high", r"column 'conf' must hold finite numbers, found \['high'\] in rows \[7\]"),
    ("weak", "maybe", r"column 'weak' must hold True/False, found \['maybe'\] in rows \[7\]"),
])
def test_bad_values_exit_2_naming_the_column_and_row(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     column: str, value: str, message: str) -> None:
    df = cascade_table().astype({column: object})
    df.loc[7, column] = value
    table = write(df, tmp_path / "t.csv")
    code = main(["routers", "evaluate-cached", "--table", str(table), "--score-col", "conf", "--weak-col", "weak",
                 "--strong-col", "strong"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err


def test_one_class_table_and_missing_columns_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    df = cascade_table(20)
    df["weak"] = True
    table = write(df, tmp_path / "t.csv")
    args = ["routers", "evaluate-cached", "--table", str(table), "--weak-col", "weak", "--strong-col", "strong"]
    assert main([*args, "--score-col", "conf"]) == 2
    assert "column 'weak' is True in every row (rows 0-19): one class" in capsys.readouterr().err
    assert main([*args, "--score-col", "confidence"]) == 2
    assert "no column 'confidence'" in capsys.readouterr().err
    assert main(args) == 2
    assert "give a prompt column" in capsys.readouterr().err


def bench_module():
    """bench/evaluate_cached.py as a module (bench/ is scripts, not a package; its sibling machine.py on the path)."""
    bench = Path(__file__).resolve().parents[1] / "bench"
    sys.path.insert(0, str(bench))
    try:
        spec = importlib.util.spec_from_file_location("bench_evaluate_cached", bench / "evaluate_cached.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(bench))
    return module


def test_bench_table_has_a_row_per_router_and_label_with_the_risk_violation_rate() -> None:
    bench = bench_module()
    df = toy_table(120)
    table = CachedTable(df["prompt"], df["weak"].to_numpy(bool), df["strong"].to_numpy(bool))
    policy = PolicySettings(resamples=20)
    rows = bench.issue17_rows(table, ["prompt_length", "random"], ("slm_correct", "gain"), 3, 0, policy)
    keys = [(r["router"], r["label"]) for r in rows]
    # random takes no target: one row, label "-"; analytic random once, last
    assert keys == [("prompt_length", "slm_correct"), ("random", "-"), ("prompt_length", "gain"),
                    (ANALYTIC_RANDOM, "-")]
    by = {k: r for k, r in zip(keys, rows)}
    assert by[("prompt_length", "slm_correct")]["folds_chose"] == "slm_correct"
    assert by[("prompt_length", "slm_correct")]["apgr"] > 0.9  # length explains every weak-model failure
    # The risk policy's violation rate is the share of draws losing more than epsilon on the other half.
    reference = evaluate_cached(table, ["prompt_length"], folds=3, target="slm_correct", policy=policy)
    risk = next(p for p in reference.policies if p["policy"] == "risk")
    assert by[("prompt_length", "slm_correct")]["risk_violated"] == pytest.approx(risk["violated"])
    assert 0.0 <= risk["violated"] <= 1.0 and risk["splits"] == 20
    assert by[(ANALYTIC_RANDOM, "-")]["apgr"] == pytest.approx(0.5) and "risk_violated" not in by[(ANALYTIC_RANDOM, "-")]
    with pytest.raises(ValueError, match="choose from"):
        bench.issue17_rows(table, ["random"], ("bogus",), 3, 0, policy)
