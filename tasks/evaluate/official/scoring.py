"""Small scoring helpers the benchmarks share: means, per-group means under metric-safe key names, and
AUROC from ranks (ties get their average rank)."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Hashable, Sequence


def key(text: str) -> str:
    """A metric-name fragment: lowercase, runs of anything but letters and digits become `_`."""
    return re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_") or "none"


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def grouped_means(prefix: str, values: Sequence[float], groups: Sequence[Hashable]) -> dict[str, float]:
    """{prefix_<group>: mean of the values in that group}, groups in sorted order; None groups skipped."""
    by: dict[str, list[float]] = defaultdict(list)
    for v, g in zip(values, groups, strict=True):
        if g is not None:
            by[key(str(g))].append(v)
    return {f"{prefix}_{g}": mean(by[g]) for g in sorted(by)}


def check_lengths(name: str, items: Sequence, predictions: Sequence) -> None:
    if len(items) != len(predictions):
        raise ValueError(f"{name}: {len(items)} items but {len(predictions)} predictions")


def auroc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula, tied scores sharing their
    average rank; None when only one class is present."""
    n = len(labels)
    positives = sum(1 for y in labels if y)
    negatives = n - positives
    if positives == 0 or negatives == 0:
        return None
    order = sorted(range(n), key=lambda i: scores[i])
    ranks = [0.0] * n
    i = 0
    while i < n:
        j = i
        while j + 1 < n and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        average = (i + j) / 2 + 1  # ranks are 1-based
        for k in range(i, j + 1):
            ranks[order[k]] = average
        i = j + 1
    positive_rank_sum = sum(r for r, y in zip(ranks, labels, strict=True) if y)
    return (positive_rank_sum - positives * (positives + 1) / 2) / (positives * negatives)
