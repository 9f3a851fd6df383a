"""Evaluation reports: a Markdown file for people and the repository, a plain table for the terminal.

METRICS.md asks that every reported number name the split, the profile, the cost model and the
seed it came from, so a report refuses a context that lacks any of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from pathlib import Path
from typing import Any

REQUIRED_CONTEXT = ("profile", "split", "cost_model", "seed")
MISSING = "—"


def format_cell(value: Any) -> str:
    """Reals to 3 decimals, integers and booleans as they are, NaN and None as an em dash."""
    if value is None:
        return MISSING
    if isinstance(value, bool | Integral):
        return str(value)
    if isinstance(value, Real):
        return MISSING if math.isnan(value) else f"{float(value):.3f}"
    return str(value)


def _columns(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None) -> list[str]:
    """The given columns, or every key of the rows in first-seen order."""
    if columns is not None:
        return list(columns)
    return list(dict.fromkeys(key for row in rows for key in row))


def _cells(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> list[list[str]]:
    return [[format_cell(row.get(col)) for col in columns] for row in rows]


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A plain-text table with aligned columns, to print results at the end of a run."""
    columns = _columns(rows, columns)
    table = [list(columns), *_cells(rows, columns)]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in table
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table; pipes inside cells are escaped."""
    columns = _columns(rows, columns)

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    body = [line(cells) for cells in _cells(rows, columns)]
    return "\n".join([line(columns), line(["---"] * len(columns)), *body])


def _header(title: str, context: Mapping[str, Any]) -> str:
    missing = [key for key in REQUIRED_CONTEXT if key not in context]
    if missing:
        raise ValueError(f"report context lacks {missing}; every report names {', '.join(REQUIRED_CONTEXT)}")
    labels = {"cost_model": "cost model"}
    facts = [f"- **{labels.get(key, key)}:** {format_cell(value)}" for key, value in context.items()]
    return "\n".join([f"# {title}", "", *facts])


def write_report(
    path: str | Path,
    *,
    title: str,
    context: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    plots: Mapping[str, str | Path],
    extra_sections: Mapping[str, str] | None = None,
    columns: Sequence[str] | None = None,
) -> Path:
    """Write the Markdown report: context header, strategies × figures table, plots, extra sections.

    context must hold profile, split, cost_model (its describe() text) and seed; other entries
    (n, ...) are listed too. Plot paths are embedded as given, so pass them relative to `path`.
    """
    sections = [
        _header(title, context),
        "## Summary",
        f"Figures as defined in METRICS.md; {MISSING} marks a figure undefined for that strategy.",
        markdown_table(rows, columns),
    ]
    if plots:
        sections.append("## Plots")
        sections += [f"### {name}\n\n![{name}]({Path(rel).as_posix()})" for name, rel in plots.items()]
    sections += [f"## {heading}\n\n{body.strip()}" for heading, body in (extra_sections or {}).items()]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(sections) + "\n", encoding="utf-8")
    return path


RELATIONS = {">=": lambda value, limit: value >= limit, "<=": lambda value, limit: value <= limit + 1e-12,
             ">": lambda value, limit: value > limit}


def target_verdicts(figures: Mapping[str, Any], targets: Mapping[str, tuple[str, str, float]]) -> dict[str, dict]:
    """Each target's figure, limit and verdict; `targets` maps a name to (what, ">=", "<=" or ">", limit), and a
    missing or NaN figure is not met (an undefined figure meets nothing)."""
    out = {}
    for name, (what, relation, limit) in targets.items():
        value = math.nan if figures.get(name) is None else float(figures[name])
        met = not math.isnan(value) and RELATIONS[relation](value, limit)
        out[name] = {"figure": what, "value": value, "relation": relation, "limit": limit, "met": met}
    return out


def verdict_table(verdicts: Mapping[str, Mapping[str, Any]]) -> str:
    """target_verdicts as a Markdown table, a missed target in bold."""
    return markdown_table([{"target": name, "figure": t["figure"], "value": t["value"],
                            "needs": f"{t['relation']} {t['limit']}", "met": "yes" if t["met"] else "**no**"}
                           for name, t in verdicts.items()])
