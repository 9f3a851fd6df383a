"""Reports name where their numbers came from and format every figure the same way."""

import math

import pytest

from escalate.evaluation import report

CONTEXT = {
    "profile": "tiny",
    "split": "test",
    "cost_model": "FLOPs = 2 · parameters · tokens",
    "seed": 7,
    "n": 200,
}
ROWS = [
    {"strategy": "p_true", "apgr": 0.87512, "togr": math.nan, "n": 200},
    {"strategy": "random", "apgr": 0.5, "togr": 0.0, "n": 200},
]


def test_format_cell_rounds_reals_and_dashes_nan():
    assert report.format_cell(0.87512) == "0.875"
    assert report.format_cell(math.nan) == "—"
    assert report.format_cell(None) == "—"
    assert report.format_cell(200) == "200"
    assert report.format_cell(True) == "True"
    assert report.format_cell("a|b") == "a|b"


def test_format_table_aligns_columns():
    table = report.format_table(ROWS, ["strategy", "apgr", "togr"])
    assert table.splitlines() == [
        "strategy  apgr   togr",
        "--------  -----  -----",
        "p_true    0.875  —",
        "random    0.500  0.000",
    ]


def test_report_has_context_table_plots_and_sections(tmp_path):
    path = report.write_report(
        tmp_path / "reports" / "eval.md",
        title="Routing evaluation",
        context=CONTEXT,
        rows=ROWS,
        plots={"Accuracy vs cost": "plots/cost.png"},
        extra_sections={"Notes": "Stage I token reduction not claimed."},
    )
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Routing evaluation\n")
    for fact in ("- **profile:** tiny", "- **split:** test", "- **seed:** 7", "- **n:** 200"):
        assert fact in text
    assert "- **cost model:** FLOPs = 2 · parameters · tokens" in text
    assert "| strategy | apgr | togr | n |\n| --- | --- | --- | --- |" in text
    assert "| p_true | 0.875 | — | 200 |" in text
    assert "| random | 0.500 | 0.000 | 200 |" in text
    assert "![Accuracy vs cost](plots/cost.png)" in text
    assert "## Notes\n\nStage I token reduction not claimed." in text


def test_markdown_table_escapes_pipes_and_fills_missing_cells():
    table = report.markdown_table([{"a": "x|y"}, {"b": 1.0}])
    assert table.splitlines()[2:] == ["| x\\|y | — |", "| — | 1.000 |"]


def test_report_refuses_context_without_provenance(tmp_path):
    with pytest.raises(ValueError, match="seed"):
        report.write_report(
            tmp_path / "r.md",
            title="t",
            context={"profile": "tiny", "split": "test", "cost_model": "x"},
            rows=ROWS,
            plots={},
        )
