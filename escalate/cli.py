"""`escalate`: the command line of the library (the Prefect flows live in flows/, run with `python -m`).

Each pipeline stage is a subcommand; dvc.yaml calls the same subcommands, so `dvc repro` and the
`retrain` flow run exactly what a person runs by hand. Bad input exits with status 2 and a message
that names the file, the key or the rows, and the fix.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

from escalate.calibration.cli import add_calibrate_command
from escalate.citer.stage import log_command
from escalate.config import ConfigError, load_profile
from escalate.config_help import SHOW_HELP, show
from escalate.data.adapters import DataSourceError
from escalate.data.adapters.base import read_table
from escalate.data.schema import TABLES
from escalate.models.backends import BackendError
from escalate.registry.cli import add_registry_commands
from escalate.registry.files import BundleError
from escalate.routers.cli import add_router_commands
from escalate.serving.cli import add_serving_commands
from escalate.serving.vllm_server import ServerError
from escalate.stages.base import publish_metrics
from escalate.stages.registry import STAGES
from escalate.stages.zoo import ship_command
from escalate.telemetry import disable_telemetry

EPILOG = """\
typical use:
  escalate config check --profile tiny      validate a profile and print it
  escalate config show --profile tiny       every key of a profile: its value and what it does
  escalate data build --profile tiny        generate / load questions, validate, write them
  escalate zoo build --profile tiny         train the embedded SLM and LLM (or record external models)
  escalate zoo ship --profile tiny          copy the built zoo to zoo/tiny/ (commit it; zoo.shipped reads it)
  escalate sample --profile tiny            K generations per question per model
  escalate evaluate --profile tiny          every baseline strategy on the test split, plots, report
  escalate sater train --profile tiny       SATER: stage I (DPO), stage II (refusal SFT) over a τ sweep, its
                                            refusal, pre-generation and vote routing vs the vanilla cascades, report
  escalate corea train --profile tiny       COREA: confidence warm-up, GRPO with (COREA) and without (RLVR)
                                            a calibration reward, cascades in and out of domain, report
  escalate citer train --profile tiny       CITER: token labels, two rounds of token routers, τ sweep, report
  escalate citer log --profile tiny         the CITER figures and files into an MLflow run, under citer/
  escalate data validate FILE --table samples   validate any table file
  escalate registry list                    registered cascades, their gates and aliases
  escalate registry promote 3 --reason ...  move @champion to version 3 (its gates must have passed)
  escalate registry rollback --reason ...   move @champion back to the previous champion
  escalate routers evaluate-cached --table FILE --prompt-col C --weak-col W --strong-col S
                                            pre-generation routers, k-fold, from cached correctness
  escalate calibrate --profile tiny --n 150 thresholds from a constructed calibration set on shifted data
  escalate promote --alias champion         serve @champion: vLLM servers, gateway switch, smoke queries
  escalate serve --detach | --stop          the OpenAI-compatible gateway in the background, or stop serving

the whole pipeline under Prefect, with MLflow tracking:  python -m flows.retrain --profile tiny
"""


def _profile_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="tiny", help="profile name in configs/ or a YAML path (default: tiny)")
    p.add_argument("--root", default=".", type=Path, help="project root holding configs/ and artifacts/")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="escalate", description="Train small language models that know when to hand a query to a large one.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")

    config = sub.add_parser("config", help="inspect profiles").add_subparsers(dest="action", required=True)
    _profile_arg(config.add_parser("check", help="load and validate a profile, print it as JSON"))
    _profile_arg(config.add_parser("show", help="every key of a profile with its value and help", description=SHOW_HELP))

    groups = _add_stage_commands(sub)
    v = groups["data"].add_parser("validate", help="validate a table file (JSONL, CSV or Parquet) against its contract")
    v.add_argument("file", type=Path)
    v.add_argument("--table", required=True, choices=list(TABLES), metavar="TABLE",
                   help=f"table kind: {', '.join(TABLES)}")
    v.add_argument("--model-ids", default=None, help="comma-separated allowed model ids (samples)")

    citer_log = groups["citer"].add_parser("log", help="log the finished stage's figures and files to MLflow under citer/")
    _profile_arg(citer_log)
    citer_log.add_argument("--run-id", default=None, help="an existing MLflow run (default: a new run citer-<profile>)")
    zoo_ship = groups["zoo"].add_parser("ship", help="copy the built zoo, with its files' SHA-256, to a committed "
                                        "directory that a profile's zoo.shipped reads")
    _profile_arg(zoo_ship)
    zoo_ship.add_argument("--to", default=None, type=Path, help="where to (default: zoo/<profile>)")
    add_registry_commands(sub)
    add_router_commands(sub)
    add_serving_commands(sub)
    add_calibrate_command(sub)
    return parser


def _add_stage_commands(sub: argparse._SubParsersAction) -> dict[str, argparse._SubParsersAction]:
    """One subcommand per registered stage, in pipeline order; returns the command groups (e.g. `data`), which
    hold other commands too."""
    groups: dict[str, argparse._SubParsersAction] = {}
    for stage in STAGES.values():
        if len(stage.command) == 1:
            parser = sub.add_parser(stage.command[0], help=stage.help)
        else:
            group, action = stage.command
            if group not in groups:
                groups[group] = sub.add_parser(group, help=stage.group_help).add_subparsers(dest="action",
                                                                                           required=True)
            parser = groups[group].add_parser(action, help=stage.help)
        _profile_arg(parser)
        parser.set_defaults(stage=stage.name)
    return groups


def main(argv: list[str] | None = None) -> int:
    disable_telemetry()
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except Exception as exc:  # turn known input errors into one clear line and exit 2
        if _is_user_error(exc):
            print(f"escalate: error: {exc}", file=sys.stderr)
            return 2
        raise


def _is_user_error(exc: Exception) -> bool:
    from escalate.data.validation import ValidationError  # great_expectations: seconds to import, only on an error

    return isinstance(exc, (ConfigError, DataSourceError, ValidationError, BackendError, BundleError, ServerError,
                            FileNotFoundError))


def _dispatch(args: argparse.Namespace) -> int:
    if args.group == "data" and args.action == "validate":
        return _validate_file(args)
    if args.group == "registry":
        return args.handler(args)
    if args.group in ("routers", "serve", "promote", "export", "calibrate"):
        return args.handler(args)
    profile = load_profile(args.profile, args.root)
    os.chdir(args.root)
    if args.group == "config" and args.action == "show":
        print(show(profile, shutil.get_terminal_size().columns))
    elif args.group == "config":
        print(json.dumps(asdict(profile), indent=2))
    elif args.group == "citer" and args.action == "log":
        print(log_command(profile, args.run_id))
    elif args.group == "zoo" and args.action == "ship":
        print(ship_command(profile, args.to))
    else:
        stage = STAGES[args.stage]
        print(stage.run(profile))
        print(f"figures: {publish_metrics(stage, profile)}")
    return 0


def _validate_file(args: argparse.Namespace) -> int:
    from escalate.data.validation import validate  # great_expectations: seconds to import, only for this command

    df = read_table(args.file, args.table)
    ids = args.model_ids.split(",") if args.model_ids else None
    report = validate(df, args.table, source=str(args.file), model_ids=ids)
    print(report.to_markdown())
    return 0 if report.ok else 2


if __name__ == "__main__":
    sys.exit(main())
