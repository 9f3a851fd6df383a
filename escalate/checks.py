"""The checks every config dataclass runs in `__post_init__`, and the error a bad profile raises.

A leaf: it imports nothing from escalate, so a method's config (escalate/sater/config.py, ...) can use
the checks while escalate.config imports that config to type its profile section, without a cycle.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A profile that cannot be used; the message names the file and the key."""


class Bad(ValueError):
    """Raised by __post_init__ checks: carries the offending field so the loader can name it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def check(ok: bool, key: str, message: str) -> None:
    """Raise Bad naming `key` unless `ok`; escalate.config.from_dict turns it into a ConfigError with the dotted key."""
    if not ok:
        raise Bad(key, message)
