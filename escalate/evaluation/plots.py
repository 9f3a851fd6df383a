"""Figures for evaluation reports: quality-versus-cost curves and reliability diagrams, as PNG.

Figures are drawn on the Agg canvas directly (no pyplot), so plotting needs no display, keeps no
global figure state across a long pipeline run, and works the same in CI and on servers.
"""

from __future__ import annotations

from itertools import cycle
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from escalate.evaluation import metrics

_REF_MARKERS = ("*", "D", "s", "^", "v", "P")


def _figure() -> tuple[Figure, Axes]:
    fig = Figure(figsize=(7.0, 5.0), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _title(heading: str, profile: str | None, split: str | None) -> str:
    """The heading plus the profile and split, since every figure must say where it came from."""
    where = ", ".join(f"{k} {v}" for k, v in (("profile", profile), ("split", split)) if v is not None)
    return f"{heading}\n({where})" if where else heading


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _plot_curves(
    curves: dict[str, pd.DataFrame],
    refs: pd.DataFrame | None,
    path: str | Path,
    *,
    x: str,
    xlabel: str,
    heading: str,
    profile: str | None,
    split: str | None,
) -> Path:
    """Accuracy against column `x` for each curve, with reference strategies as labelled markers."""
    fig, ax = _figure()
    for name, curve in curves.items():
        ax.plot(curve[x], curve["accuracy"], marker=".", markersize=3, linewidth=1.5, label=name)
    if refs is not None:
        for (name, point), marker in zip(refs.iterrows(), cycle(_REF_MARKERS)):
            ax.scatter(point[x], point["accuracy"], marker=marker, s=90, color="black", zorder=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Accuracy")
    ax.set_title(_title(heading, profile, split))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def plot_accuracy_vs_cost(
    curves: dict[str, pd.DataFrame],
    refs: pd.DataFrame | None,
    path: str | Path,
    *,
    profile: str | None = None,
    split: str | None = None,
    cost_model: str | None = None,
) -> Path:
    """Accuracy against normalized cost: shows what strategies always pay, unlike call rate."""
    xlabel = "Normalized cost (LLM-only = 1)" + (f"\n{cost_model}" if cost_model else "")
    return _plot_curves(
        curves, refs, path, x="cost", xlabel=xlabel, heading="Accuracy vs cost", profile=profile, split=split
    )


def plot_accuracy_vs_call_rate(
    curves: dict[str, pd.DataFrame],
    refs: pd.DataFrame | None,
    path: str | Path,
    *,
    profile: str | None = None,
    split: str | None = None,
) -> Path:
    """Accuracy against LLM call rate: the RouteLLM view that APGR and CPT summarize."""
    return _plot_curves(
        curves,
        refs,
        path,
        x="call_rate",
        xlabel="LLM call rate (fraction of queries the LLM answers)",
        heading="Accuracy vs LLM call rate",
        profile=profile,
        split=split,
    )


def plot_reliability(
    conf: ArrayLike, correct: ArrayLike, path: str | Path, title: str, n_bins: int = 10
) -> Path:
    """Reliability diagram: per-bin accuracy bars, the diagonal of perfect calibration, bin counts."""
    bins = metrics.reliability_bins(conf, correct, n_bins)
    fig, ax = _figure()
    width = 1.0 / n_bins
    centers = (bins["lo"] + bins["hi"]).to_numpy() / 2
    bars = ax.bar(
        centers,
        bins["accuracy"],
        width=width * 0.9,
        alpha=0.8,
        edgecolor="black",
        label=f"accuracy per bin (ECE {metrics.ece(conf, correct, n_bins):.3f})",
    )
    ax.bar_label(bars, labels=[f"n={c}" for c in bins["count"]], fontsize="x-small", padding=2)
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    ax.set_xticks(np.linspace(0, 1, n_bins + 1))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.08)
    ax.set_xlabel("Confidence (predicted P(SLM correct))")
    ax.set_ylabel("Observed SLM accuracy")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize="small")
    return _save(fig, path)


def plot_lines(
    x: ArrayLike,
    series: dict[str, ArrayLike],
    path: str | Path,
    *,
    xlabel: str,
    ylabel: str,
    heading: str,
    profile: str | None = None,
    split: str | None = None,
) -> Path:
    """Several figures against one knob (a training threshold, say), one line each; NaN leaves a gap."""
    fig, ax = _figure()
    for label, values in series.items():
        ax.plot(np.asarray(x, float), np.asarray(values, float), marker="o", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(_title(heading, profile, split))
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return _save(fig, path)
