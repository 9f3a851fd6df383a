"""`escalate config show`: every key of a profile with its value and what it does, grouped by section.

The rows come from the config dataclasses themselves (each field's `help` metadata, TRL's style), so a
field added to any section, the method sections included, is listed here without an edit.
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
import types
import typing
from collections.abc import Iterator
from typing import Any, NamedTuple

from escalate.config import Profile, field_types

SHOW_HELP = """\
Print every key of a profile as a table: its dotted key (as the profile's YAML nests it), its value (the
file's, or the default where the file is silent) and what it controls, its unit and why one would change it.
Keys are grouped by section; a method section the profile leaves out (sater, corea, citer) shows as null.
The profile is validated first: a bad one exits 2 naming the file and the key, as `config check` does."""

# Values wider than this (long lists, mappings) take their own line, so one of them cannot push every help aside.
VALUE_WIDTH = 24


class Row(NamedTuple):
    key: str  # dotted, as a profile's YAML nests it: zoo.slm.arch.hidden_size
    value: Any
    help: str


def rows(config: Any, prefix: str = "") -> Iterator[Row]:
    """A row per leaf field of dataclass `config`, depth first in field order.

    Nested sections and dicts of sections (a profile's `models`) are walked into; a section that is
    absent (an Optional method section left null) is one row with value None.
    """
    hints = field_types(type(config))
    for f in dataclasses.fields(config):
        key, value = f"{prefix}{f.name}", getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            yield from rows(value, f"{key}.")
        elif isinstance(value, dict) and _holds_sections(hints[f.name]):
            for name, section in value.items():
                yield from rows(section, f"{key}.{name}.")
        else:
            yield Row(key, value, f.metadata.get("help", ""))


def _holds_sections(hint: Any) -> bool:
    """Whether a dict-typed field maps names to config dataclasses (a profile's `models`)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_holds_sections(arg) for arg in typing.get_args(hint))
    args = typing.get_args(hint)
    return typing.get_origin(hint) is dict and dataclasses.is_dataclass(args[1])


def show(profile: Profile, width: int = 120) -> str:
    """The profile as a table of key, value and help, one block per top-level section, `width` columns wide."""
    table = [(row.key, _format_value(row.value), row.help) for row in rows(profile)]
    key_width = max(len(key) for key, _, _ in table)
    value_width = min(max(len(value) for _, value, _ in table), VALUE_WIDTH)
    help_at = 2 + key_width + 2 + value_width + 2  # indent, key, gap, value, gap
    wrap = textwrap.TextWrapper(width=max(width - help_at, 30))
    section_help = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(profile)}
    lines, section = [], None
    for key, value, help_text in table:
        head = key.split(".")[0] if "." in key else "profile"
        if head != section:
            section = head
            lines += [""] if lines else []
            lines.append(f"{head}: {section_help.get(head, 'the profile itself')}")
        helps = wrap.wrap(help_text) or [""]
        if len(value) > value_width:  # a long value gets its own line; its help starts under the help column
            lines.append(f"  {key:<{key_width}}  {value}")
        else:
            lines.append(f"  {key:<{key_width}}  {value:<{value_width}}  {helps.pop(0)}")
        lines += [" " * help_at + more for more in helps]
    return "\n".join(line.rstrip() for line in lines)


def _format_value(value: Any) -> str:
    """A value as a profile's YAML would spell it (null, true, [1, 2]); strings bare."""
    return value if isinstance(value, str) else json.dumps(value)
