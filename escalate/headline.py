"""The README's headline tables, rendered from the committed metrics files, so that no figure there is typed by hand.

Each stage publishes the figures it logs to MLflow as metrics/<profile>/<stage>.json (`dvc metrics show` reads
them; `escalate.stages.base.publish_metrics`). `make report` (`python -m escalate.headline`) rewrites every block
of README.md between `<!-- figures:NAME -->` and `<!-- /figures:NAME -->` from those files, and `--check` (run by
tests/test_headline.py) fails when a block differs from what they say. The testbed's targets (issue 15) are judged
here with the rule every stage's targets use (`evaluation.report.target_verdicts`).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

from escalate.evaluation.report import format_cell, markdown_table, target_verdicts

Figures = dict[str, dict[str, float | None]]  # stage -> its published figures (flat key -> number, None: undefined)

# What each query-level strategy is called in the README: (stage, key prefix of its row, separator included, label).
STRATEGIES = (
    ("evaluate", "eval.p_true_token.", "P(T) cascade"),
    ("evaluate", "eval.mean_logprob.", "mean log-prob cascade"),
    ("evaluate", "eval.min_logprob.", "min log-prob cascade"),
    ("evaluate", "eval.entropy.", "entropy cascade"),
    ("evaluate", "eval.self_consistency.", "self-consistency"),
    ("evaluate", "eval.random.", "random"),
    ("evaluate", "eval.prompt_length.", "prompt length (pre-generation)"),
    ("evaluate", "eval.embedding_lr.", "MiniLM embedding + LR (pre-generation)"),
    ("evaluate", "eval.embedding_features.", "MiniLM + question features (pre-generation)"),
    ("evaluate", "eval.pik_probe.", "P(IK) probe on SLM hidden states (pre-generation)"),
    ("evaluate", "eval.joint_pik_pt.", "joint P(IK)/P(T) cascade"),
    ("sater", "sater/sater/sater_refusal/", "SATER refusal cascade"),
    ("sater", "sater/sater/sater_pregen/", "SATER refusal probability (pre-generation)"),
    ("sater", "sater/sater/sater_vote/", "SATER weighted vote"),
    ("corea", "corea/all/", "COREA stated confidence"),
)
NOT_A_ROUTER = {"evaluate": ("eval.oracle.", "eval.random.")}  # left out of "the best query-level strategy"
COLUMNS = {"accuracy": "accuracy", "cost": "cost", "call_rate": "call rate", "apgr": "APGR", "togr": "ToGR",
           "saving_at_iso_accuracy": "saving at acc ≥ LLM − δ", "auroc": "AUROC", "ece": "ECE"}
COUNTS = {"distinct_confidences"}  # figures that count things: shown as integers
COREA_COLUMNS = {"accuracy": "cascade_accuracy", "cost": "cascade_cost"}  # COREA's rows name the SLM's own "accuracy"


def load(profile: str, root: Path | str = ".") -> Figures:
    """Every stage's published figures for `profile`; a stage that has not published is absent."""
    where = Path(root) / "metrics" / profile
    figures = {path.stem: json.loads(path.read_text()) for path in sorted(where.glob("*.json"))}
    timing = Path(root) / "bench" / "results" / f"demo_timing_{profile}.json"  # bench/demo_timing.py's record
    if timing.is_file():
        figures["demo_timing"] = {f"seconds.{k}": v for k, v in json.loads(timing.read_text())["seconds"].items()}
    return figures


def figure(figures: Figures, stage: str, key: str) -> float:
    """One figure, NaN when the stage has not published it or it is undefined."""
    value = figures.get(stage, {}).get(key)
    return math.nan if value is None else float(value)


def strategy_figure(figures: Figures, stage: str, prefix: str, column: str) -> float:
    key = COREA_COLUMNS.get(column, column) if stage == "corea" else column
    return figure(figures, stage, prefix + key)


def whole(value: float) -> str:
    """A count as an integer with thousands separators, an undefined one as format_cell's dash."""
    return format_cell(value) if math.isnan(value) else f"{value:,.0f}"


def zoo_table(figures: Figures) -> str:
    """Greedy accuracy of both models per difficulty on the evaluation split, and how each model was chosen."""
    levels = sorted({k.rsplit(".d", 1)[1] for k in figures.get("evaluate", {})
                     if k.startswith("eval.accuracy_by_difficulty.slm.d")}, key=lambda d: (d == "all", d))
    rows = []
    for level in levels:
        slm, llm, n = (figure(figures, "evaluate", f"eval.accuracy_by_difficulty.{m}.d{level}")
                       for m in ("slm", "llm", "n"))
        bold = (lambda v: f"**{format_cell(v)}**") if level == "all" else format_cell
        rows.append({"difficulty (steps)": level, "n": whole(n), "SLM accuracy": bold(slm),
                     "LLM accuracy": bold(llm), "gap": format_cell(llm - slm)})
    models = [{"model": role.upper(), "parameters": whole(figure(figures, "zoo", f"zoo.{role}.n_params")),
               "calib accuracy (chose the step)": format_cell(figure(figures, "zoo", f"zoo.{role}.calib_accuracy")),
               "chosen step": whole(figure(figures, "zoo", f"zoo.{role}.chosen_step")),
               "steps run": whole(figure(figures, "zoo", f"zoo.{role}.steps_run"))} for role in ("slm", "llm")]
    return markdown_table(rows) + "\n\n" + markdown_table(models)


def candidates_table(figures: Figures) -> str:
    """Every query-level strategy at its calib threshold (accuracy, cost, call rate) and over the test sweep,
    CITER priced the same way, the oracle and the two single-model references."""
    rows = []
    for stage, prefix, label in STRATEGIES:
        if stage in figures and not math.isnan(strategy_figure(figures, stage, prefix, "accuracy")):
            rows.append({"strategy": label, **{name: format_cell(strategy_figure(figures, stage, prefix, column))
                                               for column, name in COLUMNS.items()}})
    if "citer" in figures:
        citer = {"accuracy": "citer/priced/accuracy", "cost": "citer/priced/cost", "call_rate": "citer/priced/call_rate",
                 "saving_at_iso_accuracy": "citer/priced/saving_at_iso_accuracy"}
        rows.append({"strategy": "CITER token-level", **{name: format_cell(figure(figures, "citer", citer[column]))
                                                         if column in citer else "—"
                                                         for column, name in COLUMNS.items()}})
    rows.append({"strategy": "oracle", **{name: format_cell(strategy_figure(figures, "evaluate", "eval.oracle.", column))
                                          for column, name in COLUMNS.items()}})
    refs = {column: " / ".join(format_cell(figure(figures, "evaluate", f"eval.{ref}.{column}"))
                               for ref in ("SLM-only", "LLM-only")) for column in ("accuracy", "cost", "call_rate")}
    rows.append({"strategy": "SLM-only / LLM-only", **{name: refs.get(column, "") for column, name in COLUMNS.items()}})
    return markdown_table(rows)


def best_query_level_saving(figures: Figures) -> tuple[float, str]:
    """The largest saving at accuracy ≥ LLM-only − δ over the test sweep among the query-level routers, and which."""
    savings = [(strategy_figure(figures, stage, prefix, "saving_at_iso_accuracy"), label)
               for stage, prefix, label in STRATEGIES if prefix not in NOT_A_ROUTER.get(stage, ())]
    savings = [(s, label) for s, label in savings if not math.isnan(s)]
    return max(savings, default=(math.nan, "none"))


# Issue 15's targets: (figure, relation, limit), judged by target_verdicts on the figures testbed_figures computes.
TARGETS = {
    "zoo: SLM accuracy, low end": ("SLM-only accuracy on test", ">=", 0.45),
    "zoo: SLM accuracy, high end": ("SLM-only accuracy on test", "<=", 0.65),
    "zoo: LLM accuracy": ("LLM-only accuracy on test", ">=", 0.88),
    "SATER I: token cut": ("1 − greedy output tokens after / before stage I", ">=", 0.40),
    "SATER I: accuracy drop": ("greedy accuracy before − after stage I", "<=", 0.01),
    "SATER II: AROL cut (model)": ("1 − AROL(refusal cascade) / AROL(vanilla P(T) cascade), latency model", ">=", 0.80),
    "SATER II: AROL cut (measured)": ("the same, measured wall time", ">=", 0.80),
    "SATER II: AGL cut (model)": ("1 − AGL(refusal cascade) / AGL(vanilla P(T) cascade), latency model", ">=", 0.50),
    "SATER II: AGL cut (measured)": ("the same, measured wall time", ">=", 0.50),
    "COREA: ECE cut": ("1 − ECE(COREA) / ECE(RLVR), in-domain", ">=", 0.40),
    "COREA: AUROC gain": ("AUROC(COREA) − AUROC(RLVR), in-domain", ">=", 0.05),
    "COREA: distinct confidences": ("distinct readable confidences COREA states on test (greedy)", ">=", 5),
    "routing: share of the oracle's saving": ("best query-level saving / oracle's saving, acc ≥ LLM − δ", ">=", 0.5),
    "CITER vs best query-level, token prices": ("CITER's saving − best query-level saving, acc ≥ LLM − δ", ">", 0.0),
    "CITER vs best query-level, bytes moved": ("1 − CITER's bytes / best query-level's bytes, acc ≥ LLM − δ", ">", 0.0),
}


def testbed_figures(figures: Figures) -> dict[str, float]:
    """Each of issue 15's target figures from the published ones (NaN where a stage has not published)."""
    slm, llm = (figure(figures, "evaluate", f"eval.{ref}.accuracy") for ref in ("SLM-only", "LLM-only"))
    best, _ = best_query_level_saving(figures)
    return {
        "zoo: SLM accuracy, low end": slm, "zoo: SLM accuracy, high end": slm, "zoo: LLM accuracy": llm,
        "SATER I: token cut": figure(figures, "sater", "sater/stage1/token_reduction"),
        "SATER I: accuracy drop": figure(figures, "sater", "sater/targets/accuracy_drop"),
        "SATER II: AROL cut (model)": figure(figures, "sater", "sater/latency/sater_refusal/arol_cut_model_s"),
        "SATER II: AROL cut (measured)": figure(figures, "sater", "sater/latency/sater_refusal/arol_cut_s"),
        "SATER II: AGL cut (model)": figure(figures, "sater", "sater/latency/sater_refusal/agl_cut_model_s"),
        "SATER II: AGL cut (measured)": figure(figures, "sater", "sater/latency/sater_refusal/agl_cut_s"),
        "COREA: ECE cut": figure(figures, "corea", "corea/targets/ece_reduction"),
        "COREA: AUROC gain": figure(figures, "corea", "corea/targets/auroc_gain"),
        "COREA: distinct confidences": figure(figures, "corea", "corea/targets/distinct_confidences"),
        "routing: share of the oracle's saving": best / figure(figures, "evaluate", "eval.oracle.saving_at_iso_accuracy"),
        "CITER vs best query-level, token prices": figure(figures, "citer", "citer/priced/saving_at_iso_accuracy") - best,
        "CITER vs best query-level, bytes moved":
            1 - figure(figures, "citer", "citer/comparison/citer_over_best_at_iso_accuracy"),
    }


def targets_table(figures: Figures) -> str:
    """Issue 15's targets with their figures and verdicts; an unmet one in bold."""
    verdicts = target_verdicts(testbed_figures(figures), TARGETS)
    best, label = best_query_level_saving(figures)
    rows = [{"target": name, "figure": t["figure"],
             "measured": whole(t["value"]) if isinstance(t["limit"], int) else format_cell(t["value"]),
             "needs": f"{t['relation']} {format_cell(t['limit'])}", "": "met" if t["met"] else "**missed**"}
            for name, t in verdicts.items()]
    met = sum(t["met"] for t in verdicts.values())
    return (markdown_table(rows)
            + f"\n\n{met} of {len(verdicts)} met. The best query-level strategy: {label} "
              f"(saving {format_cell(best)}).")


def rows_table(figures: Figures, stage: str, rows: list[tuple[str, str]], columns: dict[str, str]) -> str:
    """One row per (label, key prefix) of a stage's figures, one column per (key, header); a row the stage has
    not published is left out."""
    found = [(label, prefix) for label, prefix in rows if any(k.startswith(prefix + "/") for k in figures.get(stage, {}))]
    def cell(prefix: str, key: str) -> str:
        value = figure(figures, stage, f"{prefix}/{key}")
        return whole(value) if key in COUNTS else format_cell(value)

    return markdown_table([{"": label, **{header: cell(prefix, key) for key, header in columns.items()}}
                           for label, prefix in found])


def sater_table(figures: Figures) -> str:
    """SATER's routing on the stage-II SLM beside the vanilla SLM's cascades, on the same test samples."""
    rows = [("vanilla: P(T) cascade", "sater/vanilla/p_true_token"),
            ("vanilla: self-consistency", "sater/vanilla/self_consistency"),
            ("SATER: refusal cascade", "sater/sater/sater_refusal"),
            ("SATER: pre-generation", "sater/sater/sater_pregen"), ("SATER: weighted vote", "sater/sater/sater_vote")]
    columns = {"accuracy": "accuracy", "cost": "cost", "call_rate": "call rate", "slm_output_tokens": "SLM tokens",
               "agl_model_s": "AGL model (s)", "arol_model_s": "AROL model (s)", "agl_s": "AGL measured (s)",
               "arol_s": "AROL measured (s)", "saving_at_iso_accuracy": "saving at acc ≥ LLM − δ", "auroc": "AUROC"}
    stage1 = {"tokens_before": "tokens before", "tokens_after": "tokens after", "token_reduction": "token cut",
              "accuracy_before": "accuracy before", "accuracy_after": "accuracy after"}
    first = markdown_table([{"stage I (test, greedy)": "", **{header: format_cell(figure(
        figures, "sater", f"sater/stage1/{key}")) for key, header in stage1.items()}}])
    return rows_table(figures, "sater", rows, columns) + "\n\n" + first


def corea_table(figures: Figures) -> str:
    """Each checkpoint of the COREA stage in-domain (the difficulties RL trained on): how well its confidence
    matches and ranks its answers, and what its cascade saves."""
    rows = [(f"{model} ({domain})", f"{model}/{domain}") for domain in ("in_domain", "ood")
            for model in ("base", "warmup", "rlvr", "corea")]
    columns = {"accuracy": "SLM accuracy", "ece": "ECE", "brier": "Brier", "auroc": "AUROC",
               "distinct_confidences": "distinct confidences", "saving_at_iso_accuracy": "saving at acc ≥ LLM − δ",
               "llm_accuracy": "LLM-only accuracy"}
    return rows_table(figures, "corea", rows, columns)


def citer_table(figures: Figures) -> str:
    """Each CITER round at the τ chosen on calib (bytes moved over LLM-only's), and its best point over the sweep."""
    columns = {"tau": "τ (chosen on calib)", "accuracy": "accuracy", "cost": "bytes moved", "flops": "FLOPs",
               "llm_token_share": "tokens the LLM wrote", "saving_at_iso_accuracy": "bytes saved at acc ≥ LLM − δ"}
    return rows_table(figures, "citer", [("CITER round 1", "citer/r1"), ("CITER round 2", "citer/r2")], columns)


DEMO_TARGETS_MIN = {"clean": ("a clean `make demo` after install", 20), "first_table": ("its first results table", 5),
                    "rerun": ("a rerun with nothing changed", 2)}  # issue 15's speed targets, minutes


def timing_table(figures: Figures) -> str:
    """bench/demo_timing.py's measured wall times against issue 15's speed targets."""
    rows = []
    for key, (label, limit) in DEMO_TARGETS_MIN.items():
        minutes = figure(figures, "demo_timing", f"seconds.{key}") / 60
        rows.append({"": label, "measured (min)": f"{minutes:.1f}", "target (min)": f"≤ {limit}",
                     "verdict": "met" if minutes <= limit else "**missed**"})
    return markdown_table(rows)


BLOCKS: dict[str, Callable[[Figures], str]] = {"timing": timing_table, "zoo": zoo_table, "candidates": candidates_table,
                                               "targets": targets_table, "sater": sater_table, "corea": corea_table,
                                               "citer": citer_table}
BLOCK = re.compile(r"(<!-- figures:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /figures:(?P=name) -->)", re.DOTALL)


def render(text: str, figures: Figures) -> str:
    """`text` with every figures block rewritten from `figures`; an unknown block name is an error."""
    def rewrite(match: re.Match) -> str:
        name = match["name"]
        if name not in BLOCKS:
            raise ValueError(f"README block <!-- figures:{name} --> is not one of {sorted(BLOCKS)}")
        return f"{match[1]}{BLOCKS[name](figures)}\n{match[4]}"

    return BLOCK.sub(rewrite, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render the README's headline tables from metrics/<profile>/*.json.")
    parser.add_argument("--profile", default="tiny", help="whose committed metrics to render (default: tiny)")
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when the README differs")
    args = parser.parse_args(argv)
    figures = load(args.profile, args.readme.parent)
    if not figures:
        print(f"no metrics under {args.readme.parent / 'metrics' / args.profile}: run the pipeline "
              f"(`dvc repro` or `make demo`) first", file=sys.stderr)
        return 2
    text = args.readme.read_text()
    rendered = render(text, figures)
    if args.check:
        stale = [m["name"] for m, n in zip(BLOCK.finditer(text), BLOCK.finditer(rendered)) if m[0] != n[0]]
        if stale:
            print(f"{args.readme}: blocks {', '.join(stale)} differ from metrics/{args.profile}/; run `make report`",
                  file=sys.stderr)
            return 1
        return 0
    args.readme.write_text(rendered)
    print(f"{args.readme}: {len(list(BLOCK.finditer(text)))} blocks rendered from metrics/{args.profile}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
