"""Dataset adapters turn a generator or a file into the `questions` table; bad files fail with a
message naming the file and what is wrong. Files are written into tmp_path (GSM8K rows are copied
from shared/data, never written there)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from escalate.config import ArithConfig, DataConfig
from escalate.data.adapters import ADAPTERS, DataSourceError, get_adapter
from escalate.data.adapters.base import assign_splits, finish, read_table
from escalate.data.graders import grade_numeric
from escalate.data.schema import SPLITS, columns
from escalate.data.validation import validate
from escalate.prompts import format_prompt

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"
QUESTION_COLUMNS = [c.name for c in columns("questions")]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- arith ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def arith_questions() -> pd.DataFrame:
    cfg = DataConfig(arith=ArithConfig(n_train=60, n_calib=30, n_test=25, min_steps=1, max_steps=3, max_operand=9))
    return get_adapter("arith").load(cfg, seed=1)


def test_arith_counts_match_the_config(arith_questions: pd.DataFrame) -> None:
    assert arith_questions["split"].value_counts().to_dict() == {"train": 60, "calib": 30, "test": 25}
    assert list(arith_questions.columns) == QUESTION_COLUMNS


def test_arith_ids_unique_and_no_question_in_two_splits(arith_questions: pd.DataFrame) -> None:
    assert arith_questions["id"].is_unique
    splits_per_question = arith_questions.groupby("question")["split"].nunique()
    assert (splits_per_question == 1).all()


def test_arith_rows_are_consistent(arith_questions: pd.DataFrame) -> None:
    assert set(arith_questions["task"]) == {"arith"}
    assert set(arith_questions["difficulty"]) == {1, 2, 3}
    assert arith_questions["choices"].isna().all()
    for row in arith_questions.itertuples():
        solutions = json.loads(row.meta)
        assert set(solutions) == {"terse", "steps", "padded"}
        assert all(grade_numeric(s, row.answer) for s in solutions.values())
        assert row.id.startswith(f"arith-{row.split}-")


def test_arith_is_deterministic_from_the_seed(arith_questions: pd.DataFrame) -> None:
    cfg = DataConfig(arith=ArithConfig(n_train=60, n_calib=30, n_test=25, min_steps=1, max_steps=3, max_operand=9))
    again = get_adapter("arith").load(cfg, seed=1)
    other = get_adapter("arith").load(cfg, seed=2)
    pd.testing.assert_frame_equal(arith_questions, again)
    assert list(other["question"]) != list(arith_questions["question"])


def test_get_adapter_knows_every_name_and_rejects_others() -> None:
    assert set(ADAPTERS) == {"arith", "gsm8k", "table", "choice"}
    assert get_adapter("choice").grader == "choice"
    with pytest.raises(DataSourceError, match="unknown dataset adapter 'hf'; known: arith, gsm8k, table, choice"):
        get_adapter("hf")


# --- gsm8k ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gsm8k_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 50 GSM8K test rows plus row 147, whose answer is '#### 2,125'."""
    lines = GSM8K.read_text().splitlines()
    path = tmp_path_factory.mktemp("gsm8k") / "test.jsonl"
    path.write_text("\n".join(lines[:50] + [lines[146]]) + "\n")
    return path


def test_gsm8k_parses_final_answers(gsm8k_file: Path) -> None:
    df = get_adapter("gsm8k").load(DataConfig(adapter="gsm8k", path=str(gsm8k_file)), seed=0)
    assert len(df) == 51 and list(df.columns) == QUESTION_COLUMNS
    assert df.loc[0, "answer"] == "18"  # Janet's ducks: "#### 18"
    assert df.loc[0, "question"].startswith("Janet")
    assert df.loc[50, "answer"] == "2125"  # "#### 2,125": the comma is gone
    assert df["answer"].str.fullmatch(r"-?\d+").all()
    assert df["id"].is_unique and set(df["task"]) == {"gsm8k"}
    assert set(df["split"]) <= set(SPLITS)
    # difficulty counts the calculator annotations; row 0 has two: <<16-3-4=9>> and <<9*2=18>>
    assert df.loc[0, "difficulty"] == 2 and (df["difficulty"] >= 1).all()
    assert json.loads(df.loc[0, "meta"])["solution"].endswith("#### 18")


def test_gsm8k_answers_grade_their_own_solutions(gsm8k_file: Path) -> None:
    df = get_adapter("gsm8k").load(DataConfig(adapter="gsm8k", path=str(gsm8k_file)), seed=0)
    for row in df.itertuples():
        assert grade_numeric(json.loads(row.meta)["solution"], row.answer)


def test_gsm8k_limit_and_task_name(gsm8k_file: Path) -> None:
    df = get_adapter("gsm8k").load(DataConfig(adapter="gsm8k", path=str(gsm8k_file), limit=10, task="gsm"), seed=0)
    assert len(df) == 10 and set(df["task"]) == {"gsm"}


def test_gsm8k_row_without_hashes_is_named(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "g.jsonl", [
        {"question": "q0", "answer": "2 + 2 = 4\n#### 4"},
        {"question": "q1", "answer": "the answer is 5"},
        {"question": "q2", "answer": "#### 6"},
    ])
    with pytest.raises(DataSourceError) as info:
        get_adapter("gsm8k").load(DataConfig(adapter="gsm8k", path=str(path)), seed=0)
    msg = str(info.value)
    assert msg.startswith(str(path)) and "rows [1] have no '#### N'" in msg


def test_gsm8k_missing_column_is_named(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "g.jsonl", [{"question": "q0", "solution": "#### 4"}])
    with pytest.raises(DataSourceError, match=r"GSM8K rows need \['answer'\]; found \['question', 'solution'\]"):
        get_adapter("gsm8k").load(DataConfig(adapter="gsm8k", path=str(path)), seed=0)


# --- table ---------------------------------------------------------------------------------------


def mapped_frame() -> pd.DataFrame:
    return pd.DataFrame({"uid": ["a", "b", "c"], "prompt": ["1+1?", "2+2?", "3+3?"], "target": [2, 4, 6]})


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_table_adapter_applies_the_column_mapping(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"t{suffix}"
    frame = mapped_frame()
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True)
    cfg = DataConfig(adapter="table", path=str(path), task="sums",
                     columns={"id": "uid", "question": "prompt", "answer": "target"})
    df = get_adapter("table").load(cfg, seed=0)
    assert list(df.columns) == QUESTION_COLUMNS
    assert list(df["id"]) == ["a", "b", "c"]
    assert list(df["question"]) == ["1+1?", "2+2?", "3+3?"]
    assert list(df["answer"]) == ["2", "4", "6"]  # always strings, whatever the file's type
    assert set(df["task"]) == {"sums"}
    assert set(df["split"]) <= set(SPLITS)


def test_table_adapter_reads_csv_with_the_schema_types(tmp_path: Path) -> None:
    """A CSV is all text: mapped or not, each contract column gets its type, so the table validates."""
    path = tmp_path / "t.csv"
    pd.DataFrame({
        "qid": ["007", "8", "9"], "prompt": ["1+1?", "2+2?", "3+3?"], "gold": ["042", "4", "6"],
        "split": ["train", "calib", "test"], "difficulty": [1.0, None, 3.0], "meta": [None, '{"s": 1}', None],
    }).to_csv(path, index=False)
    cfg = DataConfig(adapter="table", path=str(path), columns={"id": "qid", "question": "prompt", "answer": "gold"})
    df = get_adapter("table").load(cfg, seed=0)
    assert list(df["id"]) == ["007", "8", "9"] and list(df["answer"]) == ["042", "4", "6"]
    assert list(df["difficulty"]) == [1, None, 3]
    assert df["meta"].isna().tolist() == [True, False, True] and df.loc[1, "meta"] == '{"s": 1}'
    assert validate(df, "questions", numeric_tasks=["table"]).ok


def test_read_table_types_only_the_contract_columns_of_a_csv(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("id,difficulty,notes\n01,2,03\n")
    assert read_table(path).iloc[0].tolist() == ["01", "2", "03"]
    assert read_table(path, "questions").iloc[0].tolist() == ["01", 2, "03"]


def test_table_adapter_bad_mapping_names_column_and_lists_file_columns(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    mapped_frame().to_csv(path, index=False)
    cfg = DataConfig(adapter="table", path=str(path), columns={"question": "prompt", "answer": "gold"})
    with pytest.raises(DataSourceError) as info:
        get_adapter("table").load(cfg, seed=0)
    msg = str(info.value)
    assert msg.startswith(str(path))
    assert "['gold'] not found" in msg and "['uid', 'prompt', 'target']" in msg


def test_table_adapter_unmapped_required_column_suggests_mapping(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    mapped_frame().to_parquet(path, index=False)
    cfg = DataConfig(adapter="table", path=str(path), columns={"answer": "target"})
    with pytest.raises(DataSourceError) as info:
        get_adapter("table").load(cfg, seed=0)
    msg = str(info.value)
    assert "needs columns ['question']" in msg and "data.columns: {question: <your column>}" in msg


# --- choice --------------------------------------------------------------------------------------


def test_choice_adapter_converts_indexes_to_letters_and_lists_to_json(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"question": "Sky colour?", "options": ["red", "blue", "green"], "label": 1},
        {"question": "Two plus two?", "options": ["3", "4"], "label": 0},
        {"question": "Last?", "options": json.dumps(["x", "y", "z", "w"]), "label": "d"},
    ])
    cfg = DataConfig(adapter="choice", path=str(path), columns={"choices": "options", "answer": "label"})
    df = get_adapter("choice").load(cfg, seed=0)
    assert list(df["answer"]) == ["B", "A", "D"]
    assert [json.loads(c) for c in df["choices"]] == [["red", "blue", "green"], ["3", "4"], ["x", "y", "z", "w"]]
    assert set(df["task"]) == {"choice"}


def test_choice_adapter_reads_parquet_list_columns(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    pd.DataFrame({"question": ["q0", "q1"], "choices": [["a", "b"], ["c", "d", "e"]], "answer": ["B", "2"]}).to_parquet(path)
    df = get_adapter("choice").load(DataConfig(adapter="choice", path=str(path)), seed=0)
    assert [json.loads(c) for c in df["choices"]] == [["a", "b"], ["c", "d", "e"]]
    assert list(df["answer"]) == ["B", "C"]


def test_choice_adapter_names_the_row_with_bad_choices(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    pd.DataFrame({"question": ["q0", "q1"], "choices": ['["a", "b"]', "a or b"], "answer": ["A", "B"]}).to_csv(path, index=False)
    with pytest.raises(DataSourceError, match=r"row 1: choices is not a JSON list: 'a or b'"):
        get_adapter("choice").load(DataConfig(adapter="choice", path=str(path)), seed=0)


def test_choice_prompt_letters_the_options() -> None:
    as_json = format_prompt(" Sky colour? ", json.dumps(["red", "blue"]))
    assert as_json == "Question: Sky colour?\nA. red\nB. blue\nAnswer:"
    assert format_prompt("Sky colour?", ["red", "blue"]) == as_json
    assert format_prompt("2+2?") == "Question: 2+2?\nAnswer:"


# --- reading files -------------------------------------------------------------------------------


def test_read_table_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match="no such file"):
        read_table(tmp_path / "absent.jsonl")


def test_read_table_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("question,answer\n")
    with pytest.raises(DataSourceError) as info:
        read_table(path)
    assert str(info.value).startswith(str(path))
    assert "unsupported extension '.txt'; use one of .jsonl, .json, .csv, .parquet" in str(info.value)


@pytest.mark.parametrize(("name", "content"), [("bad.parquet", b"not parquet at all"), ("bad.jsonl", b"{oops\n")])
def test_read_table_unreadable_file(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataSourceError) as info:
        read_table(path)
    assert str(info.value).startswith(f"{path}: cannot be read as {path.suffix[1:]}")


def test_adapter_on_a_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.jsonl"
    with pytest.raises(DataSourceError, match=f"{path}: no such file"):
        get_adapter("gsm8k").load(DataConfig(adapter="gsm8k", path=str(path)), seed=0)


# --- splits and finishing ----------------------------------------------------------------------


def test_assign_splits_is_stable_under_reordering() -> None:
    ids = pd.Series([f"q{i}" for i in range(500)])
    fractions = {"train": 0.6, "calib": 0.2, "test": 0.2}
    forward = dict(zip(ids, assign_splits(ids, fractions, seed=3)))
    shuffled = ids.sample(frac=1.0, random_state=0).reset_index(drop=True)
    backward = dict(zip(shuffled, assign_splits(shuffled, fractions, seed=3)))
    assert forward == backward
    other_seed = dict(zip(ids, assign_splits(ids, fractions, seed=4)))
    assert other_seed != forward


def test_assign_splits_roughly_matches_fractions() -> None:
    ids = pd.Series([f"id-{i}" for i in range(4000)])
    shares = assign_splits(ids, {"train": 0.5, "calib": 0.3, "test": 0.2}, seed=0).value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.5, abs=0.03)
    assert shares["calib"] == pytest.approx(0.3, abs=0.03)
    assert shares["test"] == pytest.approx(0.2, abs=0.03)


def test_assign_splits_leaves_a_zero_fraction_split_empty() -> None:
    ids = pd.Series(range(300))
    assert set(assign_splits(ids, {"train": 0.7, "test": 0.3}, seed=0)) == {"train", "test"}


def test_finish_keeps_file_splits_and_serialises_meta() -> None:
    df = pd.DataFrame({"question": ["a", "b"], "answer": ["1", "2"], "split": ["test", "calib"],
                       "meta": [{"source": "x"}, None]})
    out = finish(df, DataConfig(adapter="table", path="unused.csv"), "t", seed=0)
    assert list(out["id"]) == ["t-00000", "t-00001"]
    assert list(out["split"]) == ["test", "calib"]
    assert out.loc[0, "meta"] == '{"source": "x"}' and pd.isna(out.loc[1, "meta"])
    assert out["difficulty"].isna().all()
