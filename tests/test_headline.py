"""The README's headline tables come from the committed metrics files: rendering, the testbed's verdicts, and the
README itself against metrics/tiny/."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from escalate import headline

ROOT = Path(__file__).resolve().parents[1]


def figures() -> headline.Figures:
    """A small published pipeline: a zoo in the testbed's band, two routers, SATER, COREA and CITER."""
    return {
        "zoo": {"zoo.slm.n_params": 107840, "zoo.slm.calib_accuracy": 0.5, "zoo.slm.chosen_step": 900,
                "zoo.slm.steps_run": 1300, "zoo.llm.n_params": 985984, "zoo.llm.calib_accuracy": 0.9,
                "zoo.llm.chosen_step": 1200, "zoo.llm.steps_run": 1200},
        "evaluate": {"eval.accuracy_by_difficulty.slm.d1": 0.8, "eval.accuracy_by_difficulty.llm.d1": 0.99,
                     "eval.accuracy_by_difficulty.n.d1": 200, "eval.accuracy_by_difficulty.slm.dall": 0.5,
                     "eval.accuracy_by_difficulty.llm.dall": 0.9, "eval.accuracy_by_difficulty.n.dall": 400,
                     "eval.SLM-only.accuracy": 0.5, "eval.LLM-only.accuracy": 0.9, "eval.SLM-only.cost": 0.05,
                     "eval.LLM-only.cost": 1.0, "eval.SLM-only.call_rate": 0.0, "eval.LLM-only.call_rate": 1.0,
                     "eval.p_true_token.accuracy": 0.88, "eval.p_true_token.cost": 0.7,
                     "eval.p_true_token.saving_at_iso_accuracy": 0.30, "eval.p_true_token.auroc": 0.8,
                     "eval.random.accuracy": 0.88, "eval.random.saving_at_iso_accuracy": 0.45,
                     "eval.oracle.accuracy": 0.9, "eval.oracle.saving_at_iso_accuracy": 0.55},
        "sater": {"sater/stage1/token_reduction": 0.45, "sater/targets/accuracy_drop": 0.005,
                  "sater/latency/sater_refusal/arol_cut_model_s": 0.9, "sater/latency/sater_refusal/arol_cut_s": 0.85,
                  "sater/latency/sater_refusal/agl_cut_model_s": 0.6, "sater/latency/sater_refusal/agl_cut_s": 0.55,
                  "sater/sater/sater_refusal/accuracy": 0.89, "sater/sater/sater_refusal/saving_at_iso_accuracy": 0.2},
        "corea": {"corea/targets/ece_reduction": 0.5, "corea/targets/auroc_gain": 0.06,
                  "corea/targets/distinct_confidences": 7, "corea/all/cascade_accuracy": 0.87,
                  "corea/all/saving_at_iso_accuracy": None},
        "citer": {"citer/priced/accuracy": 0.89, "citer/priced/cost": 0.4, "citer/priced/call_rate": 0.6,
                  "citer/priced/saving_at_iso_accuracy": 0.6, "citer/comparison/citer_over_best_at_iso_accuracy": 0.5},
    }


def test_the_testbed_targets_are_judged_from_the_published_figures() -> None:
    verdicts = headline.target_verdicts(headline.testbed_figures(figures()), headline.TARGETS)
    assert all(t["met"] for t in verdicts.values()), {k: t["value"] for k, t in verdicts.items() if not t["met"]}
    # the best router is P(T) (0.30): random is a baseline, not a router, and the oracle is the yardstick
    assert verdicts["routing: share of the oracle's saving"]["value"] == pytest.approx(0.30 / 0.55)
    assert verdicts["CITER vs best query-level, token prices"]["value"] == pytest.approx(0.6 - 0.30)


@pytest.mark.parametrize(("change", "target"), [
    ({"evaluate__eval.LLM-only.accuracy": 0.87}, "zoo: LLM accuracy"),
    ({"evaluate__eval.SLM-only.accuracy": 0.7}, "zoo: SLM accuracy, high end"),
    ({"sater__sater/targets/accuracy_drop": 0.02}, "SATER I: accuracy drop"),
    ({"corea__corea/targets/distinct_confidences": 2}, "COREA: distinct confidences"),
    ({"evaluate__eval.oracle.saving_at_iso_accuracy": 0.7}, "routing: share of the oracle's saving"),
    ({"citer__citer/priced/saving_at_iso_accuracy": 0.30}, "CITER vs best query-level, token prices"),  # a tie: no
    ({"citer__citer/comparison/citer_over_best_at_iso_accuracy": None}, "CITER vs best query-level, bytes moved"),
])
def test_a_figure_on_the_wrong_side_misses_its_target(change: dict, target: str) -> None:
    f = figures()
    for key, value in change.items():
        stage, name = key.split("__", 1)
        f[stage][name] = value
    verdicts = headline.target_verdicts(headline.testbed_figures(f), headline.TARGETS)
    assert [name for name, t in verdicts.items() if not t["met"]] == [target]


def test_a_stage_that_has_not_published_leaves_its_rows_undefined_not_zero() -> None:
    f = figures()
    del f["corea"]
    assert math.isnan(headline.testbed_figures(f)["COREA: ECE cut"])
    assert "COREA stated confidence" not in headline.candidates_table(f)
    assert "COREA stated confidence" in headline.candidates_table(figures())


def test_render_rewrites_each_block_from_the_figures_and_nothing_else() -> None:
    text = ("# t\nhand-written 0.123\n<!-- figures:zoo -->\nstale\n<!-- /figures:zoo -->\nmiddle\n"
            "<!-- figures:targets -->\n<!-- /figures:targets -->\nend\n")
    out = headline.render(text, figures())
    assert out.startswith("# t\nhand-written 0.123\n<!-- figures:zoo -->\n| difficulty") and out.endswith("\nend\n")
    assert "stale" not in out and "| all | 400 | **0.500** | **0.900** | 0.400 |" in out
    assert "15 of 15 met." in out and "\nmiddle\n" in out
    assert headline.render(out, figures()) == out  # rendering is idempotent
    moved = figures()
    moved["evaluate"]["eval.accuracy_by_difficulty.slm.dall"] = 0.45
    assert "**0.450**" in headline.render(text, moved)
    with pytest.raises(ValueError, match="figures:nope"):
        headline.render("<!-- figures:nope -->\n<!-- /figures:nope -->", figures())


def test_check_fails_on_a_stale_readme_and_write_fixes_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "metrics" / "tiny").mkdir(parents=True)
    for stage, published in figures().items():
        (tmp_path / "metrics" / "tiny" / f"{stage}.json").write_text(json.dumps(published))
    readme = tmp_path / "README.md"
    readme.write_text("<!-- figures:candidates -->\n| old |\n<!-- /figures:candidates -->\n")
    assert headline.main(["--readme", str(readme), "--check"]) == 1
    assert "candidates differ from metrics/tiny/" in capsys.readouterr().err
    assert headline.main(["--readme", str(readme)]) == 0
    assert headline.main(["--readme", str(readme), "--check"]) == 0
    assert "| CITER token-level | 0.890 | 0.400 | 0.600 |" in readme.read_text()


def test_no_metrics_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "README.md").write_text("")
    assert headline.main(["--readme", str(tmp_path / "README.md")]) == 2
    assert "run the pipeline" in capsys.readouterr().err


def test_a_method_table_lists_the_rows_its_stage_published_under_their_labels() -> None:
    table = headline.sater_table(figures())
    assert "| SATER: refusal cascade | 0.890 |" in table and "vanilla: P(T) cascade" not in table
    assert "| 0.450 |" in table.split("\n\n")[1]  # stage I's token cut
    assert headline.citer_table({}) == headline.markdown_table([])


def test_demo_timing_is_judged_against_the_speed_targets(tmp_path: Path) -> None:
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "results" / "demo_timing_tiny.json").write_text(json.dumps(
        {"seconds": {"clean": 1234.7, "first_table": 197.0, "rerun": 111.2}}))
    table = headline.timing_table(headline.load("tiny", tmp_path))
    assert "| a clean `make demo` after install | 20.6 | ≤ 20 | **missed** |" in table
    assert "| its first results table | 3.3 | ≤ 5 | met |" in table and "| 1.9 | ≤ 2 | met |" in table


def test_the_readme_quotes_the_committed_metrics() -> None:
    """The trail: every headline block is in the README and says what metrics/tiny/ and the timing record say."""
    text = (ROOT / "README.md").read_text()
    assert all(f"<!-- figures:{name} -->" in text for name in headline.BLOCKS)
    assert headline.render(text, headline.load("tiny", ROOT)) == text, "README is stale: run `make report`"
