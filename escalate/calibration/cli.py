"""`escalate calibrate`: do thresholds fitted on a constructed calibration set hold on shifted `arith` data?

    escalate calibrate --profile tiny --n 150

Builds the shifted datasets (new phrasings and names, larger operands, longer chains, distractor
sentences) and a constructed calibration set balanced over the profile's own distribution and every shift,
samples the profile's SLM and LLM on them, fits each SLM-uncertainty strategy's threshold (within delta of
LLM-only accuracy) on (a) the constructed set without the target's shift, (b) the profile's calib split,
(c) each other shifted set alone, and applies it to every shifted set without its labels. Prints the success
rate per source and the strategy x dataset table (AUROC, ECE, APGR, met, saving); writes
artifacts/<profile>/calibration/{report.md,metrics.json}. Needs the zoo (`escalate zoo build`) and the
questions (`escalate data build`); the calib split's samples are reused when `escalate sample` ran.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from escalate.calibration.construct import STRATEGIES, CalibrateSettings
from escalate.calibration.shifts import SHIFTS, ShiftConfig
from escalate.config import load_profile


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def add_calibrate_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add `calibrate` to an argparse subparsers object; the handler is args.handler."""
    parser = subparsers.add_parser("calibrate", help="fit thresholds on a constructed calibration set, test "
                                   "them on shifted data", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny", help="profile name in configs/ or a YAML path (default: tiny)")
    parser.add_argument("--root", default=".", type=Path, help="project root holding configs/ and artifacts/")
    parser.add_argument("--n", type=int, default=CalibrateSettings.n,
                        help=f"questions per shifted set and in the constructed set (default: {CalibrateSettings.n})")
    parser.add_argument("--shifts", type=_names, default=tuple(SHIFTS),
                        help=f"comma-separated shifts, at least two (default: {','.join(SHIFTS)})")
    parser.add_argument("--strategies", type=_names, default=STRATEGIES,
                        help=f"comma-separated strategies (default: {','.join(STRATEGIES)})")
    parser.add_argument("--seed", type=int, default=0, help="question generation and sampling seed (default: 0)")
    how = ShiftConfig()
    parser.add_argument("--operand-factor", type=float, default=how.operand_factor,
                        help=f"operands shift: up to this times the profile's max_operand (default: {how.operand_factor:g})")
    parser.add_argument("--extra-steps", type=int, default=how.extra_steps,
                        help=f"long shift: up to this many steps beyond the profile's max_steps (default: {how.extra_steps})")
    parser.add_argument("--max-distractors", type=int, default=how.max_distractors,
                        help=f"distractors shift: 1 to this many irrelevant sentences (default: {how.max_distractors})")
    parser.set_defaults(handler=run_calibrate)
    return parser


def run_calibrate(args: argparse.Namespace) -> int:
    # matplotlib, scikit-learn and torch come with the routers and backends: seconds to import, only for this command
    from escalate.calibration.run import calibrate, summary_text

    how = ShiftConfig(args.operand_factor, args.extra_steps, args.max_distractors)
    settings = CalibrateSettings(n=args.n, shifts=args.shifts, strategies=args.strategies, seed=args.seed, how=how)
    profile = load_profile(args.profile, args.root)
    metrics = calibrate(profile, settings, args.root)
    print(summary_text(metrics, profile.artifacts(args.root) / "calibration"))
    return 0
