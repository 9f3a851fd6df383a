"""The `promote` flow: serve a registry alias behind the gateway (optionally moving @champion first).

    python -m flows.promote                       # serve @champion (also: escalate promote)
    python -m flows.promote --version 7 --reason "reviewed in the MLflow UI"   # make v7 champion, then serve it

Resolve the alias, export its bundle, start vLLM for the self-hosted models, switch the gateway,
send smoke queries, record the deployment on the version and move @serving. On any failure, or
SIGTERM, the servers this run started are stopped, the gateway keeps the previous bundle, no alias
moves, and the flow run fails with the reason (the process exits 1); one promotion runs at a time.
All of it is `promote_alias`'s, so `escalate promote` and this flow behave alike.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from escalate.telemetry import disable_telemetry

disable_telemetry()

from prefect import flow, task  # noqa: E402

from escalate.registry.aliases import CHAMPION, Registry, profile_registry  # noqa: E402
from escalate.serving.promote import Promotion, PromotionFailed, promote_alias  # noqa: E402


@task(name="move-champion")
def move_champion(registry: Registry, version: str, reason: str | None, by: str | None) -> str:
    return registry.promote(version, by=by, reason=reason).summary(registry.name)


# No retries: a half-done promotion is undone inside the task, and a retry would start servers twice.
@task(name="promote-to-serving")
def serve_alias(registry: Registry, root: Path, alias: str, timeout_s: float, by: str | None) -> Promotion:
    return promote_alias(registry, root, alias, timeout_s, by)


@flow(name="promote", log_prints=True)
def promote(alias: str = CHAMPION, version: str | None = None, reason: str | None = None, by: str | None = None,
            profile: str = "tiny", root: str = ".", tracking_uri: str | None = None,
            timeout_s: float = 300.0) -> str:
    """Serve @alias; with `version`, first make that version the champion (refused if it failed its gates)."""
    root_path = Path(root).resolve()
    registry = profile_registry(profile, root_path, tracking_uri)
    if version is not None:
        print(move_champion(registry, str(version), reason, by))
    summary = serve_alias(registry, root_path, alias, timeout_s, by).summary()
    print(summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.promote", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alias", default=CHAMPION, help="the registry alias to serve (default: champion)")
    parser.add_argument("--version", default=None, help="first make this version @champion (gates must have passed)")
    parser.add_argument("--reason", default=None, help="why (recorded on the version)")
    parser.add_argument("--by", default=None, help="who (default: $USER)")
    parser.add_argument("--profile", default="tiny", help="profile whose tracking URI holds the registry")
    parser.add_argument("--root", default=".")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds each vLLM server may take to start")
    args = parser.parse_args(argv)
    try:
        promote(alias=args.alias, version=args.version, reason=args.reason, by=args.by, profile=args.profile,
                root=args.root, tracking_uri=args.tracking_uri, timeout_s=args.timeout)
    except PromotionFailed as exc:
        print(f"promote: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
