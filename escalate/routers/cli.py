"""`escalate routers evaluate-cached`: every pre-generation router on a table of cached correctness.

    escalate routers evaluate-cached --table gsm8k_responses.csv --prompt-col prompt \\
        --weak-col mistralai/Mixtral-8x7B-Instruct-v0.1 --strong-col gpt-4-1106-preview --out out/

Prints APGR, CPT(50%) and CPT(80%) per router beside random; writes curves.json and a PNG under
--out. A bad column, an unreadable table or a bad option exits with status 2 and one line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from escalate.data.adapters.base import DataSourceError
from escalate.evaluation.report import format_table


def add_router_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add `routers` and its actions to an argparse subparsers object; the handler is args.handler."""
    parser = subparsers.add_parser("routers", help="evaluate routers offline from cached responses",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    ev = actions.add_parser("evaluate-cached", help="k-fold out-of-fold APGR/CPT of every pre-generation router")
    ev.add_argument("--table", required=True, type=Path, help="CSV, JSONL or Parquet file, one row per prompt")
    ev.add_argument("--prompt-col", required=True, help="column holding the prompt text")
    ev.add_argument("--weak-col", required=True, help="column: was the weak model (SLM) correct (True/False)")
    ev.add_argument("--strong-col", required=True, help="column: was the strong model (LLM) correct (True/False)")
    ev.add_argument("--group-col", default=None, help="hold out whole groups of this column in each fold")
    ev.add_argument("--folds", type=int, default=5, help="cross-validation folds (default: 5)")
    ev.add_argument("--seed", type=int, default=0, help="fold shuffling and router seed (default: 0)")
    ev.add_argument("--ratio", type=float, default=20.0, help="LLM:SLM cost ratio (default: 20)")
    ev.add_argument("--out", type=Path, default=None, help="directory for curves.json and the PNG")
    ev.add_argument("--routers", default=None, help="comma-separated routers (default: every pre-generation one)")
    parser.set_defaults(handler=run_routers)
    return parser


def run_routers(args: argparse.Namespace) -> int:
    """Carry out `routers evaluate-cached`; bad input prints one line and returns 2."""
    # matplotlib and scikit-learn: seconds to import, only for this command
    from escalate.evaluation.cached import TABLE_COLUMNS, evaluate_cached, load_table

    try:
        table = load_table(args.table, args.prompt_col, args.weak_col, args.strong_col, args.group_col)
        names = [n.strip() for n in args.routers.split(",") if n.strip()] if args.routers else None
        result = evaluate_cached(table, names, folds=args.folds, seed=args.seed, ratio=args.ratio, out_dir=args.out)
    except (DataSourceError, ValueError) as exc:
        print(f"escalate: error: {exc}", file=sys.stderr)
        return 2
    print(f"{result.n} rows, {result.folds}-fold out-of-fold scores, seed {result.seed}; "
          f"A_SLM {result.a_slm:.3f}, A_LLM {result.a_llm:.3f}, cost ratio {args.ratio:g}:1")
    print(format_table(result.rows, list(TABLE_COLUMNS)))
    for kind, path in result.files.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="escalate")
    add_router_commands(parser.add_subparsers(dest="group", required=True))
    parsed = parser.parse_args()
    sys.exit(parsed.handler(parsed))
