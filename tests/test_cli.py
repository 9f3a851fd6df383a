"""The `escalate` command line: exit codes, one-line errors naming the key or file, table validation
that prints the offending rows; and the stage helpers it relies on (paths, numeric_tasks).

`main` changes into --root, so every test that runs a subcommand starts from tmp_path through
monkeypatch, which restores the working directory afterwards.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from escalate import stages
from escalate.cli import build_parser, main
from escalate.config import load_profile

ROOT = Path(__file__).resolve().parents[1]
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def smoke_raw() -> dict:
    return copy.deepcopy(yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text()))


def gsm8k_profile(tmp_path: Path, data_path: str, name: str = "filetest") -> Path:
    """A profile on a GSM8K file with external models: no zoo, nothing to download to validate it."""
    return write_yaml(tmp_path / f"{name}.yaml", {
        "name": name,
        "data": {"adapter": "gsm8k", "path": data_path},
        "models": {"slm": {"name": "small", "source": "org/small"}, "llm": {"name": "big", "source": "org/big"}},
    })


# --- help and argument errors ------------------------------------------------------------------


def test_help_lists_the_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: escalate")
    for command in ("config", "data", "zoo", "sample", "evaluate", "typical use"):
        assert command in out


@pytest.mark.parametrize("argv", [["config", "check", "--help"], ["data", "validate", "--help"], ["evaluate", "--help"]])
def test_subcommand_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    assert "usage: escalate " + " ".join(argv[:-1]) in capsys.readouterr().out


def test_missing_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "required: COMMAND" in capsys.readouterr().err


def test_unknown_table_kind_is_a_usage_error_listing_the_kinds(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["data", "validate", "whatever.jsonl", "--table", "question"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'question'" in err and "'questions'" in err and "'samples'" in err


# --- config check --------------------------------------------------------------------------------


def test_config_check_prints_the_profile(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", "--profile", "smoke", "--root", str(ROOT)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["name"] == "smoke"
    assert printed["sampling"]["k"] == 2
    assert printed["models"]["slm"]["source"] == "zoo"


def test_config_check_gpu_profile(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", "--profile", "gpu", "--root", str(ROOT)]) == 0
    assert json.loads(capsys.readouterr().out)["models"]["llm"]["backend"] == "openai"


def test_broken_profile_exits_2_with_one_line_naming_the_key(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    raw = smoke_raw()
    raw["sampling"]["k"] = 0
    path = write_yaml(tmp_path / "broken.yaml", raw)
    assert main(["config", "check", "--profile", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert "\n" not in err
    assert err == f"escalate: error: {path}: sampling.k: must be in [1, 64], got 0"


def test_profile_with_unknown_key_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = smoke_raw()
    raw["evaluation"]["n_threshold"] = 101
    path = write_yaml(tmp_path / "typo.yaml", raw)
    assert main(["config", "check", "--profile", str(path)]) == 2
    assert "evaluation.n_threshold: unknown key (did you mean 'n_thresholds'?)" in capsys.readouterr().err


def test_unknown_profile_name_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", "--profile", "huge", "--root", str(ROOT)]) == 2
    assert "no such profile; known profiles: gpu, smoke, standin, tiny" in capsys.readouterr().err


# --- data validate -------------------------------------------------------------------------------


def questions_rows() -> list[dict]:
    return [
        {"id": "q1", "task": "arith", "question": "Ann has 2.", "answer": "2", "split": "train"},
        {"id": "q2", "task": "arith", "question": "Ben has 3.", "answer": "3", "split": "calib"},
        {"id": "q3", "task": "arith", "question": "Cara has 4.", "answer": "4", "split": "test"},
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_data_validate_good_file_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_jsonl(tmp_path / "good.jsonl", questions_rows())
    assert main(["data", "validate", str(path), "--table", "questions"]) == 0
    out = capsys.readouterr().out
    assert f"`questions` from `{path}`: valid (3 rows)" in out


def test_data_validate_bad_file_exits_2_naming_the_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = questions_rows()
    rows[1]["split"] = "dev"
    rows[2]["answer"] = "four"
    rows.append({"id": "q4", "task": "arith", "question": "Dan has 5.", "answer": "5", "split": "train"})
    path = tmp_path / "bad.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    assert main(["data", "validate", str(path), "--table", "questions"]) == 2
    out = capsys.readouterr().out
    split_line = next(line for line in out.splitlines() if line.startswith("| split |"))
    answer_line = next(line for line in out.splitlines() if line.startswith("| answer |"))
    assert "| q2 |" in split_line and "'dev'" in split_line
    assert "| q3 |" in answer_line and "'four'" in answer_line
    assert "q4" not in out and "q1" not in out  # the good rows are not named


def test_data_validate_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "absent.parquet"
    assert main(["data", "validate", str(path), "--table", "samples"]) == 2
    assert capsys.readouterr().err.strip() == f"escalate: error: {path}: no such file"


# --- data build ----------------------------------------------------------------------------------


def test_data_build_on_a_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profile = gsm8k_profile(tmp_path, "data/missing.jsonl")
    assert main(["data", "build", "--profile", str(profile), "--root", str(tmp_path)]) == 2
    assert "data/missing.jsonl: no such file" in capsys.readouterr().err


def test_data_build_writes_validated_questions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "data").mkdir()
    lines = GSM8K.read_text().splitlines()[:30]
    (tmp_path / "data" / "gsm8k.jsonl").write_text("\n".join(lines) + "\n")
    profile = gsm8k_profile(tmp_path, "data/gsm8k.jsonl")
    assert main(["data", "build", "--profile", str(profile), "--root", str(tmp_path)]) == 0
    out_path = tmp_path / "artifacts" / "filetest" / "questions.parquet"
    assert f"wrote {Path('artifacts/filetest/questions.parquet')}" in capsys.readouterr().out
    df = pd.read_parquet(out_path)
    assert len(df) == 30 and df.loc[0, "answer"] == "18"
    report = json.loads((tmp_path / "artifacts" / "filetest" / "questions_report.json").read_text())
    assert report["ok"] is True and report["n_rows"] == 30


# --- stage helpers -------------------------------------------------------------------------------


def test_paths_live_under_the_profile_artifacts(tmp_path: Path) -> None:
    profile = load_profile("smoke", root=ROOT)
    p = stages.paths(profile, tmp_path)
    base = tmp_path / "artifacts" / "smoke"
    assert p == {
        "questions": base / "questions.parquet",
        "questions_report": base / "questions_report.json",
        "zoo": base / "zoo",
        "samples": base / "samples.parquet",
        "samples_report": base / "samples_report.json",
        "latency": base / "latency.parquet",
        "eval": base / "eval",
        "sater": base / "sater",
        "corea": base / "corea",
    }


def test_numeric_tasks_are_those_without_choices() -> None:
    questions = pd.DataFrame({
        "task": ["arith", "mmlu", "gsm8k", "arc", "arith", "blank"],
        "choices": [None, '["a", "b"]', "", '["c", "d"]', float("nan"), "  "],
    })
    assert stages.numeric_tasks(questions) == ["arith", "blank", "gsm8k"]
    assert stages.numeric_tasks(questions[questions["task"].isin(["mmlu", "arc"])]) == []


def test_load_questions_without_a_build_says_what_to_run(tmp_path: Path) -> None:
    profile = load_profile("smoke", root=ROOT)
    with pytest.raises(FileNotFoundError, match="run `escalate data build --profile smoke` first"):
        stages.load_questions(profile, tmp_path)


def test_sater_train_without_a_sater_section_exits_2_saying_so(capsys: pytest.CaptureFixture[str],
                                                               bare_gpu_root: Path) -> None:
    assert main(["sater", "train", "--profile", "gpu", "--root", str(bare_gpu_root)]) == 2
    assert "profile 'gpu' has no sater section" in capsys.readouterr().err


def test_build_parser_has_every_stage_command() -> None:
    parser = build_parser()
    for argv in (["zoo", "build"], ["sample"], ["evaluate"], ["data", "build"], ["config", "check"],
                 ["sater", "train"]):
        args = parser.parse_args([*argv, "--profile", "smoke"])
        assert args.profile == "smoke" and args.root == Path(".")

