"""Figures logged to MLflow beside the metrics: loss curves, realized mixture shares, evaluation
scores against their chance levels. Drawn off-screen (matplotlib's Agg backend), returned open;
`Tracker.log_figure` closes them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402


def curves(
    series: Mapping[str, Sequence[tuple[float, float]]], xlabel: str, ylabel: str, *, chained: bool = False
) -> Any:
    """One line per series of (x, y) points; `chained` places each series after the one before on
    the x axis (the stages of a pipeline, step counts restarting in each)."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    offset = 0.0
    for name, points in series.items():
        if not points:
            continue
        xs = [x + offset for x, _ in points]
        ax.plot(xs, [y for _, y in points], label=name, linewidth=1.4)
        if chained:
            offset = xs[-1]
    ax.set_xlabel(xlabel + (" (stages one after another)" if chained else ""))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def mixture_shares(rows: Sequence[Mapping[str, Any]]) -> Any:
    """Spec share and realized share of each dataset of a stage's mixture, side by side."""
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * len(rows)))
    names = [r["dataset"] for r in rows]
    ys = range(len(rows))
    ax.barh([y + 0.2 for y in ys], [r["spec_share"] for r in rows], height=0.4, label="spec")
    ax.barh([y - 0.2 for y in ys], [r["realized_share"] for r in rows], height=0.4, label="realized")
    ax.set_yticks(list(ys), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("share of samples")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def scores(metrics: Mapping[str, float]) -> Any:
    """Each `<name>` score with a `<name>_chance` beside it, as paired bars (scores without a chance
    level get a bar of their own)."""
    skip = ("_chance", "_majority", "_gate", "_gate_met", "_parse_rate")
    names = [k for k in metrics if not k.endswith(skip) and "_accuracy_" not in k]
    fig, ax = plt.subplots(figsize=(max(4, 1.3 * len(names)), 4))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [metrics[n] for n in names], width=0.4, label="model")
    ax.bar(
        [x + 0.2 for x in xs],
        [metrics.get(f"{n}_chance", metrics.get(n.replace("_accuracy", "_chance"), 0.0)) for n in names],
        width=0.4,
        label="chance",
    )
    ax.set_xticks(list(xs), names, rotation=20, fontsize=8)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
