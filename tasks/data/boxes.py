"""Bounding boxes as text, the MiniGPT-v2 way: `{<x1><y1><x2><y2>}` with integers on a 0-100 scale.

Training targets, evaluation parsing and generation all go through these functions, so the
format cannot drift between them.
"""

from __future__ import annotations

import re

Box = tuple[int, int, int, int]

_BOX_RE = re.compile(
    r"\{\s*<\s*(\d{1,3})\s*>\s*<\s*(\d{1,3})\s*>\s*<\s*(\d{1,3})\s*>\s*<\s*(\d{1,3})\s*>\s*\}"
)


def normalise_box(x1: float, y1: float, x2: float, y2: float, width: float, height: float) -> Box:
    """Pixel box -> integer box on 0-100, clamped and ordered."""
    xs = sorted((x1 / width, x2 / width))
    ys = sorted((y1 / height, y2 / height))

    def scale(v: float) -> int:
        return max(0, min(100, round(v * 100)))

    return (scale(xs[0]), scale(ys[0]), scale(xs[1]), scale(ys[1]))


def format_box(box: Box) -> str:
    x1, y1, x2, y2 = (int(v) for v in box)
    for v in (x1, y1, x2, y2):
        if not 0 <= v <= 100:
            raise ValueError(f"box coordinate {v} outside 0-100 in {box}")
    return f"{{<{x1}><{y1}><{x2}><{y2}>}}"


def format_grounded_phrase(phrase: str, box: Box) -> str:
    return f"<p>{phrase}</p> {format_box(box)}"


def parse_boxes(text: str) -> list[Box]:
    """Every well-formed box in `text`, in order (coordinates above 100 are clamped)."""
    return [tuple(min(100, int(g)) for g in m.groups()) for m in _BOX_RE.finditer(text)]  # type: ignore[misc]


def iou(a: Box, b: Box) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area if area > 0 else 0.0
