"""Every profile field says what it does, and `escalate config show` lists every key with its value and help.

The config classes are found through Profile's type hints, whatever module they live in, so a section or
a field added later is checked without editing this file.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import pytest

from escalate.cli import main
from escalate.config import Profile, field_types, load_profile
from escalate.config_help import rows, show

ROOT = Path(__file__).resolve().parents[1]


def reachable(hint: Any, found: dict[str, type] | None = None) -> dict[str, type]:
    """Every dataclass in `hint`, recursively through fields, Optional, list and dict types, by name."""
    found = {} if found is None else found
    for arg in typing.get_args(hint):
        reachable(arg, found)
    if dataclasses.is_dataclass(hint) and hint.__name__ not in found:
        found[hint.__name__] = hint
        for field_hint in field_types(hint).values():
            reachable(field_hint, found)
    return found


CLASSES = reachable(Profile)
# SaterConfig's dpo and refusal sections get their help where the SATER configs move (another branch of
# issue 14 owns escalate/train/); strict, so this mark fails once they have it and must then go.


def test_discovery_reaches_every_section_and_the_method_configs() -> None:
    expected = {"DataConfig", "ArithConfig", "ModelConfig", "ZooModelConfig", "ArchConfig", "PretrainConfig",
                "SamplingConfig", "EvaluationConfig", "GateLimits", "TrackingConfig", "CiterConfig",
                "CiterRouterConfig", "SaterConfig", "CoreaConfig"}
    assert expected <= set(CLASSES)
    assert len(CLASSES) >= 20  # the SATER and COREA training configs too, through their sections' types


@pytest.mark.parametrize("name", CLASSES)
def test_every_field_has_help(name: str) -> None:
    missing = [f.name for f in dataclasses.fields(CLASSES[name]) if not str(f.metadata.get("help", "")).strip()]
    assert missing == [], f"{name}: fields without help: {missing}"


def leaf_paths(value: Any, prefix: str = "") -> list[str]:
    """Dotted paths to every leaf of a profile's plain-data form; an empty mapping is a leaf."""
    if isinstance(value, dict) and value:
        return [p for key, item in value.items() for p in leaf_paths(item, f"{prefix}{key}.")]
    return [prefix.rstrip(".")]


def printed_rows(out: str) -> dict[str, str]:
    """The table's rows, key -> the rest of its line (section headers are not indented)."""
    lines = [line.strip() for line in out.splitlines() if line.startswith("  ") and not line.startswith("   ")]
    return {line.split()[0]: line.split(maxsplit=1)[1] for line in lines}


def test_config_show_prints_every_key_of_the_tiny_profile(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "--profile", "tiny", "--root", str(ROOT)]) == 0
    printed = printed_rows(capsys.readouterr().out)
    profile = load_profile("tiny", root=ROOT)
    for path in leaf_paths(dataclasses.asdict(profile)):
        # a mapping-valued field (cost.prices, data.columns) is one row; a section is walked into
        covering = [key for key in printed if path == key or path.startswith(key + ".")]
        assert len(covering) == 1, f"{path}: printed as {covering}"
    assert {"zoo.slm.arch.hidden_size", "models.llm.backend", "sater.dpo.beta", "corea.grpo.num_generations",
            "citer.router.hidden_sizes", "cost.prices", "data.columns"} <= set(printed)
    assert printed["zoo.llm.arch.hidden_size"].startswith("128 ")
    assert printed["models.slm.name"].startswith("zoo-slm ")
    assert printed["citer.rollout_tau"].startswith("null ")
    assert printed["citer.router.hidden_sizes"].startswith("[128, 64] ")
    assert "generations per question" in printed["sampling.k"]  # help wraps at >= 30 columns


def test_rows_walk_dicts_of_sections_and_keep_an_absent_section_as_one_row(bare_gpu_root: Path) -> None:
    gpu = load_profile("gpu", root=bare_gpu_root)
    found = {row.key: row for row in rows(gpu)}
    assert found["models.llm.endpoint"].value == "http://127.0.0.1:8001/v1"
    assert found["models.llm.endpoint"].help.startswith("base URL of an OpenAI-compatible server")
    for section in ("zoo", "sater", "corea", "citer"):
        assert found[section].value is None and "null" in found[section].help
        assert not any(key.startswith(section + ".") for key in found)


def test_show_groups_rows_under_their_section_and_wraps_help_to_the_width() -> None:
    smoke = load_profile("smoke", root=ROOT)
    lines = show(smoke, width=100).splitlines()
    headers = [line for line in lines if line and not line.startswith(" ")]
    assert [h.split(":")[0] for h in headers] == ["profile", "data", "models", "zoo", "sampling", "cost", "evaluation",
                                                  "tracking", "gates", "sater", "corea", "citer"]
    assert any(h.startswith("gates: the limits a candidate cascade must pass") for h in headers)
    # only a value too wide for its column (a long list or mapping) may run past the width, alone on its line
    too_wide = [line for line in lines if len(line) > 100]
    assert too_wide == [line for line in too_wide if len(line.split()) >= 2 and line.split()[1][0] in "[{"]
    refusal_token = lines.index(next(line for line in lines if line.startswith("  sater.refusal.refusal_token ")))
    assert lines[refusal_token + 1].startswith(" " * 40)  # its help goes on under the help column


def test_config_show_help_explains_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["config", "show", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: escalate config show")
    assert "grouped by section" in " ".join(out.split())
