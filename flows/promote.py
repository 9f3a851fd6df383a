"""The `promote` flow, run by hand: move @champion to a registered version whose gates passed.

    python -m flows.promote --version 7 --reason "reviewed in the MLflow UI"

A version that does not exist or failed a gate is refused with the reason, and no alias moves.
(Serving the champion behind the gateway builds on this flow.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from escalate.telemetry import disable_telemetry

disable_telemetry()

from prefect import flow, task  # noqa: E402

from escalate.config import load_profile  # noqa: E402
from escalate.registry.aliases import Registry  # noqa: E402
from escalate.tracking import resolve_uri  # noqa: E402


@task(name="move-champion")
def move_champion(registry: Registry, version: str, reason: str | None, by: str | None) -> str:
    return registry.promote(version, by=by, reason=reason).summary(registry.name)


@flow(name="promote", log_prints=True)
def promote(version: str, reason: str | None = None, by: str | None = None, profile: str = "tiny",
            root: str = ".", tracking_uri: str | None = None) -> str:
    """Make `version` the champion; refuses versions that are missing or failed their gates."""
    root_path = Path(root).resolve()
    uri = resolve_uri(tracking_uri or load_profile(profile, root_path).tracking.uri, root_path)
    summary = move_champion(Registry(uri), str(version), reason, by)
    print(summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.promote", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", required=True, help="the model version to make @champion")
    parser.add_argument("--reason", default=None, help="why (recorded on the version)")
    parser.add_argument("--by", default=None, help="who (default: $USER)")
    parser.add_argument("--profile", default="tiny", help="profile whose tracking URI holds the registry")
    parser.add_argument("--root", default=".")
    parser.add_argument("--tracking-uri", default=None)
    args = parser.parse_args(argv)
    promote(version=args.version, reason=args.reason, by=args.by, profile=args.profile, root=args.root,
            tracking_uri=args.tracking_uri)
    return 0


if __name__ == "__main__":
    sys.exit(main())
