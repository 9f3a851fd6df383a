"""Plots write real PNG files without a display."""

from pathlib import Path

import numpy as np
import pandas as pd

from escalate.evaluation import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def curves() -> dict[str, pd.DataFrame]:
    x = np.linspace(0, 1, 11)
    return {
        "p_true": pd.DataFrame({"call_rate": x, "cost": 0.1 + 1.0 * x, "accuracy": 0.5 + 0.3 * np.sqrt(x)}),
        "random": pd.DataFrame({"call_rate": x, "cost": 0.05 + 0.95 * x, "accuracy": 0.5 + 0.3 * x}),
    }


def refs() -> pd.DataFrame:
    return pd.DataFrame(
        {"call_rate": [0.0, 1.0], "cost": [0.05, 1.0], "accuracy": [0.5, 0.8]}, index=["SLM-only", "LLM-only"]
    )


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_accuracy_vs_cost_writes_a_png(tmp_path):
    path = plots.plot_accuracy_vs_cost(
        curves(), refs(), tmp_path / "nested" / "cost.png", profile="tiny", split="test", cost_model="FLOPs"
    )
    assert path == tmp_path / "nested" / "cost.png"
    assert_png(path)


def test_accuracy_vs_call_rate_writes_a_png_without_references(tmp_path):
    assert_png(plots.plot_accuracy_vs_call_rate(curves(), None, tmp_path / "rate.png"))


def test_reliability_diagram_writes_a_png(tmp_path):
    rng = np.random.default_rng(0)
    conf = rng.random(200)
    correct = rng.random(200) < conf
    assert_png(plots.plot_reliability(conf, correct, tmp_path / "rel.png", "P(True) on test"))


def test_title_names_profile_and_split_when_given():
    assert plots._title("Accuracy vs cost", "tiny", "test") == "Accuracy vs cost\n(profile tiny, split test)"
    assert plots._title("Accuracy vs cost", None, None) == "Accuracy vs cost"
