"""The retrain flow's decisions as plain functions, so the flow is only task calls: which candidates a finished
run offers and where each registers from, whether the data changed since the champion, and the results
table it prints (the candidates, then the references).

Run by `python -m flows.retrain --profile tiny`; each function reads only files and the values it is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from escalate.config import Profile
from escalate.evaluation.report import format_table
from escalate.evaluation.run import SUMMARY_COLUMNS
from escalate.registry.publish import same_data
from escalate.stages.registry import candidates
from escalate.tracking import dvc_hashes


def candidate_sources(profile: Profile, root: Path) -> tuple[list[dict], dict[str, tuple[Profile, Path]]]:
    """Every candidate's summary row, and the profile and evaluation it is registered from, by strategy."""
    found = candidates(profile, root)
    return [row for row, _, _ in found], {row["strategy"]: (source, where) for row, source, where in found}


def is_reference(row: Mapping) -> bool:
    """A reference row of the summary (SLM-only, LLM-only, the oracle), shown for comparison after the cascades."""
    return row.get("mode") == "-" or row["strategy"] == "oracle"


def results_table(rows: list[dict]) -> str:
    """Every candidate's row, the trained SLMs' too, then the references."""
    references = [r for r in rows if is_reference(r)]
    return format_table([r for r in rows if r not in references] + references, ["strategy", *SUMMARY_COLUMNS[1:]])


def data_unchanged(champion_lineage: Mapping[str, str] | None, root: Path, profile: str) -> bool:
    """Whether the questions' DVC hash is the one the champion (its version's lineage, Registry.lineage; None: no
    champion) was trained on: a scheduled run then records "no change" and stops."""
    return same_data(champion_lineage, dvc_hashes(root, profile), profile)
