"""A bundle's files and its one error type: what bundle.py and every cascade kind share.

A bundle records each checkpoint's (and a token router's) file sizes in cascade.json and checks them
before any weights load, so an incomplete upload or export fails naming the file. Kept apart from
bundle.py so escalate.kinds can use it without importing the bundle's MLflow side (which imports them).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

SPEC_FILE = "cascade.json"


class BundleError(RuntimeError):
    """A bundle that cannot be built or loaded; the message names the file or setting."""


def file_sizes(directory: Path) -> dict[str, int]:
    """relative path -> size in bytes of every file under a checkpoint directory (links followed)."""
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    return {p.relative_to(directory).as_posix(): p.stat().st_size for p in files}


def check_files(directory: Path, expected: Mapping[str, int], role: str) -> None:
    """Raise BundleError naming every file of a bundled checkpoint that is missing or has the wrong size."""
    found = file_sizes(directory) if directory.is_dir() else {}
    missing = sorted(f for f in expected if f not in found)
    wrong = sorted(f for f in expected if f in found and found[f] != expected[f])
    if missing or wrong:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"wrong size {', '.join(f'{f} ({found[f]} of {expected[f]} bytes)' for f in wrong)}"] if wrong else [])
        raise BundleError(f"the bundled {role} checkpoint at {directory} is incomplete: {'; '.join(parts)}")
