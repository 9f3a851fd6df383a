"""`escalate routers evaluate-cached`: every pre-generation router, or a cascade's confidence, on a table
of cached correctness.

    escalate routers evaluate-cached --table gsm8k_responses.csv --prompt-col prompt \\
        --weak-col mistralai/Mixtral-8x7B-Instruct-v0.1 --strong-col gpt-4-1106-preview --out out/
    escalate routers evaluate-cached --table t.csv --score-col slm_confidence --weak-col slm --strong-col llm \\
        --group-col dataset

Prints APGR, CPT(50%) and CPT(80%) per router beside random, each threshold policy over resampled
calib/test halves and, with --group-col, the threshold transfer test; writes curves.json and a PNG
under --out. A bad column or value, a one-class table, an unreadable table or a bad option exits with
status 2 and one line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from escalate.data.adapters.base import DataSourceError
from escalate.evaluation.report import format_table
from escalate.routers.targets import CHOICES


def add_router_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add `routers` and its actions to an argparse subparsers object; the handler is args.handler."""
    parser = subparsers.add_parser("routers", help="evaluate routers offline from cached responses",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    ev = actions.add_parser("evaluate-cached", help="k-fold out-of-fold APGR/CPT of every pre-generation router")
    ev.add_argument("--table", required=True, type=Path, help="CSV, JSONL or Parquet file, one row per prompt")
    ev.add_argument("--prompt-col", default=None, help="column holding the prompt text (routers need it)")
    ev.add_argument("--score-col", default=None,
                    help="evaluate this SLM confidence column instead of routers (cascade: the SLM attempt is paid)")
    ev.add_argument("--weak-col", required=True, help="column: was the weak model (SLM) correct (True/False)")
    ev.add_argument("--strong-col", required=True, help="column: was the strong model (LLM) correct (True/False)")
    ev.add_argument("--group-col", default=None, help="hold out whole groups of this column in each fold")
    ev.add_argument("--folds", type=int, default=5, help="cross-validation folds (default: 5)")
    ev.add_argument("--seed", type=int, default=0, help="fold shuffling and router seed (default: 0)")
    ev.add_argument("--ratio", type=float, default=20.0, help="LLM:SLM cost ratio (default: 20)")
    ev.add_argument("--out", type=Path, default=None, help="directory for curves.json and the PNG")
    ev.add_argument("--routers", default=None, help="comma-separated routers (default: every pre-generation one)")
    ev.add_argument("--target", default="auto", choices=CHOICES,
                    help="what the learned routers predict (escalate/routers/targets.py; default: auto, chosen on calib)")
    ev.add_argument("--resamples", type=int, default=100, help="calib/test halves the policies are drawn on")
    ev.add_argument("--delta", type=float, default=0.02, help="accuracy policy: within delta of LLM-only")
    ev.add_argument("--budget", type=float, default=0.5, help="budget policy: largest call rate")
    ev.add_argument("--error-cost", type=float, default=10.0, help="cost-optimal policy: a wrong answer in LLM calls")
    ev.add_argument("--risk-epsilon", type=float, default=0.05, help="risk policy: accuracy loss bound")
    ev.add_argument("--risk-alpha", type=float, default=0.1, help="risk policy: allowed violation probability")
    parser.set_defaults(handler=run_routers)
    return parser


def run_routers(args: argparse.Namespace) -> int:
    """Carry out `routers evaluate-cached`; bad input prints one line and returns 2."""
    # matplotlib and scikit-learn: seconds to import, only for this command
    from escalate.evaluation.cached import (
        POLICY_COLUMNS,
        TABLE_COLUMNS,
        TRANSFER_COLUMNS,
        PolicySettings,
        evaluate_cached,
        load_table,
    )

    try:
        table = load_table(args.table, args.prompt_col, args.weak_col, args.strong_col, args.group_col, args.score_col)
        names = [n.strip() for n in args.routers.split(",") if n.strip()] if args.routers else None
        policy = PolicySettings(delta=args.delta, budget=args.budget, error_cost=args.error_cost,
                                risk_epsilon=args.risk_epsilon, risk_alpha=args.risk_alpha, resamples=args.resamples)
        result = evaluate_cached(table, names, folds=args.folds, seed=args.seed, ratio=args.ratio, target=args.target,
                                 policy=policy, out_dir=args.out)
    except (DataSourceError, ValueError) as exc:
        print(f"escalate: error: {exc}", file=sys.stderr)
        return 2
    scored = (f"cascade on column {args.score_col!r}" if args.score_col
              else f"{result.folds}-fold out-of-fold scores")
    print(f"{result.n} rows, {scored}, seed {result.seed}; "
          f"A_SLM {result.a_slm:.3f}, A_LLM {result.a_llm:.3f}, cost ratio {args.ratio:g}:1")
    print(format_table(result.rows, list(TABLE_COLUMNS)))
    print(f"\nthreshold policies, fitted on half the rows and applied to the other, {args.resamples} draws:")
    print(format_table(result.policies, list(POLICY_COLUMNS)))
    if result.transfer:
        print(f"\nthreshold transfer across {args.group_col!r} (each group held out):")
        print(format_table(result.transfer, list(TRANSFER_COLUMNS)))
    for kind, path in result.files.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="escalate")
    add_router_commands(parser.add_subparsers(dest="group", required=True))
    parsed = parser.parse_args()
    sys.exit(parsed.handler(parsed))
