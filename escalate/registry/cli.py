"""`escalate registry list | show VERSION | diff A B | promote VERSION | rollback`: review and move versions.

The registry is the tiny profile's MLflow store by default (its `tracking.uri`, made absolute under
--root); `--tracking-uri` points anywhere else, e.g. a team's MLflow server. Run standalone as

    python -m escalate.registry.cli list
    python -m escalate.registry.cli rollback --reason "p95 latency doubled after the switch"

Refusals and an unreachable registry exit with status 2 and one line that says why.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from escalate.config import ConfigError
from escalate.evaluation.report import format_table
from escalate.registry.aliases import CHALLENGER, CHAMPION, DEFAULT_NAME, Registry, RegistryError, profile_registry
from escalate.telemetry import disable_telemetry

EPILOG = """\
examples:
  escalate registry list                          every version, its aliases and gate verdict
  escalate registry show 3                        version 3's gates (figure, limit, reason), lineage, params
  escalate registry diff 2 3                      params, metrics, tags and lineage that differ
  escalate registry promote 3 --reason "..."      make version 3 @champion (only if its gates passed)
  escalate registry rollback --reason "..."       move @champion back to the previous champion
"""


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking/registry URI (default: the profile's tracking.uri under --root)")
    common.add_argument("--name", default=None,
                        help=f"registered model name (default: the profile's tracking.registered_model, {DEFAULT_NAME} "
                             "for tiny)")
    common.add_argument("--profile", default="tiny", help="profile whose tracking.uri is the default (default: tiny)")
    common.add_argument("--root", default=".", type=Path, help="project root holding configs/ and mlruns/")
    common.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return common


def add_registry_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add `registry` and its actions to an argparse subparsers object; the handler is args.handler."""
    common = _common()
    parser = subparsers.add_parser("registry", help="review, promote and roll back cascades in the MLflow registry",
                                   description=__doc__, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", parents=[common], help="every version with its aliases and gate verdict")
    actions.add_parser("show", parents=[common], help="one version in full").add_argument("version")
    diff = actions.add_parser("diff", parents=[common], help="what differs between two versions")
    diff.add_argument("a")
    diff.add_argument("b")
    promote = actions.add_parser("promote", parents=[common],
                                 help="make a version @champion (its gates must have passed)")
    promote.add_argument("version")
    rollback = actions.add_parser("rollback", parents=[common], help="move @champion back to the previous champion")
    for p in (promote, rollback):
        p.add_argument("--reason", default=None, help="why (recorded in the version's tags)")
        p.add_argument("--by", default=None, help="who (default: $USER)")
    parser.set_defaults(handler=run_registry)
    return parser


def run_registry(args: argparse.Namespace) -> int:
    """Carry out one `registry` action; registry errors and refusals print one line and return 2."""
    try:
        registry = profile_registry(args.profile, Path(args.root).resolve(), args.tracking_uri, args.name)
        return _ACTIONS[args.action](registry, args)
    except (RegistryError, ConfigError) as exc:
        print(f"escalate: error: {exc}", file=sys.stderr)
        return 2


def _list(registry: Registry, args: argparse.Namespace) -> int:
    rows = registry.list_versions()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"{registry.name}: no versions yet in {registry.uri}")
        return 0
    print(format_table(rows, ["version", "aliases", "gates", "failed", "strategy", "threshold", "created", "run_id"]))
    aliases = registry.aliases()
    print(f"\n@{CHAMPION}: {aliases.get(CHAMPION, '-')}   @{CHALLENGER}: {aliases.get(CHALLENGER, '-')}   "
          f"(registry {registry.uri})")
    return 0


def _show(registry: Registry, args: argparse.Namespace) -> int:
    info = registry.show(args.version)
    if args.json:
        print(json.dumps({**info, "gates": [g.to_dict() for g in info["gates"]]}, indent=2, default=str))
        return 0
    print(f"{info['name']} version {info['version']}   aliases: {', '.join('@' + a for a in info['aliases']) or '-'}")
    for key in ("created", "run_id", "model_id", "source", "description"):
        print(f"  {key}: {info[key] or '-'}")
    if info["gates"]:
        print("\ngates:")
        print(format_table([{"gate": g.name, "verdict": "pass" if g.passed else "FAIL", "figure": g.figure,
                             "limit": g.limit, "reason": g.reason} for g in info["gates"]]))
    for section in ("tags", "lineage", "params", "metrics"):
        if info[section]:
            print(f"\n{section}:")
            print("\n".join(f"  {k} = {v}" for k, v in sorted(info[section].items())))
    return 0


def _diff(registry: Registry, args: argparse.Namespace) -> int:
    diff = registry.diff(args.a, args.b)
    if args.json:
        print(json.dumps(diff, indent=2, default=str))
        return 0
    rows = [{"section": section, "key": key, f"version {args.a}": a, f"version {args.b}": b}
            for section, changes in diff.items() for key, (a, b) in changes.items()]
    print(format_table(rows) if rows else f"versions {args.a} and {args.b} do not differ")
    return 0


def _promote(registry: Registry, args: argparse.Namespace) -> int:
    result = registry.promote(args.version, by=args.by, reason=args.reason)
    was = f" (was version {result.previous_champion})" if result.previous_champion else ""
    if result.previous_champion == result.version:
        print(f"{registry.name}@{CHAMPION} is already version {result.version}; nothing moved")
    else:
        print(f"{registry.name}@{CHAMPION} -> version {result.version}{was}")
    return 0


def _rollback(registry: Registry, args: argparse.Namespace) -> int:
    old, new = registry.rollback(reason=args.reason, by=args.by)
    print(f"{registry.name}@{CHAMPION} -> version {new} (rolled back from version {old}); "
          f"recorded in both versions' tags")
    return 0


_ACTIONS = {"list": _list, "show": _show, "diff": _diff, "promote": _promote, "rollback": _rollback}


def main(argv: list[str] | None = None) -> int:
    disable_telemetry()
    parser = argparse.ArgumentParser(prog="escalate")  # usage reads as the `escalate registry` command
    add_registry_commands(parser.add_subparsers(dest="group", required=True))
    args = parser.parse_args(["registry", *(sys.argv[1:] if argv is None else argv)])
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
