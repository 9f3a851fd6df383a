"""A bundle's files and its one error type: what bundle.py and every cascade kind share.

A bundle lists every file of each checkpoint and of its router in cascade.json, with its size and
SHA-256, and checks them before anything loads, so an incomplete upload or export, or a file changed
in the registry since registration, fails naming the file. Kept apart from bundle.py so escalate.kinds
can use it without importing the bundle's MLflow side (which imports them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SPEC_FILE = "cascade.json"
CHUNK = 1 << 20  # hashing streams 1 MiB at a time: checkpoints can be larger than memory allows


class BundleError(RuntimeError):
    """A bundle that cannot be built or loaded; the message names the file or setting."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files(directory: Path) -> dict[str, Path]:
    """relative path -> file, for every file under `directory` (links followed)."""
    return {p.relative_to(directory).as_posix(): p for p in sorted(directory.rglob("*")) if p.is_file()}


def manifest(directory: Path) -> dict[str, dict[str, Any]]:
    """relative path -> {"size": bytes, "sha256": hex digest} of every file under a bundled directory."""
    return {name: {"size": path.stat().st_size, "sha256": sha256(path)} for name, path in _files(directory).items()}


def check_files(directory: Path, expected: Mapping[str, Any], role: str) -> None:
    """Raise BundleError naming every file of a bundled directory that is missing, unexpected, or whose size
    or SHA-256 differs from `expected` (a manifest); sizes are compared first, so a truncated file costs no hash."""
    if not all(isinstance(entry, Mapping) and {"size", "sha256"} <= entry.keys() for entry in expected.values()):
        raise BundleError(f"{SPEC_FILE} lists the bundled {role} files without SHA-256 digests (a bundle from "
                          "before they were recorded); re-register the candidate")
    found = _files(directory) if directory.is_dir() else {}
    missing = sorted(f for f in expected if f not in found)
    unexpected = sorted(f for f in found if f not in expected)
    sizes = {f: found[f].stat().st_size for f in expected if f in found}
    wrong = sorted(f for f, size in sizes.items() if size != expected[f]["size"])
    altered = sorted(f for f, size in sizes.items() if f not in wrong and sha256(found[f]) != expected[f]["sha256"])
    problems = {
        "missing": ", ".join(missing),
        "unexpected": ", ".join(unexpected),
        "wrong size": ", ".join(f"{f} ({sizes[f]} of {expected[f]['size']} bytes)" for f in wrong),
        "altered": ", ".join(altered) + f" (SHA-256 differs from {SPEC_FILE})" if altered else "",
    }
    parts = [f"{problem} {files}" for problem, files in problems.items() if files]
    if parts:
        raise BundleError(f"the bundled {role} checkpoint at {directory} is incomplete or altered: {'; '.join(parts)}")
