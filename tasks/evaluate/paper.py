"""The TinyGPT-V paper's Table 2 (zero-shot accuracy, %), to print our scores beside. Figures from
the paper (WANT@ICML 2024); its evaluation scripts score more leniently than the official metrics
(substring matching, IconQA by ranking the options), so the columns compare orders of magnitude, not
decimals."""

from __future__ import annotations

from collections.abc import Mapping

# benchmark name (tasks.evaluate.official) -> the paper's column
COLUMNS = {"gqa": "GQA", "vsr": "VSR", "iconqa": "IconQA", "vizwiz": "VizWiz", "hateful_memes": "HM"}
TABLE2: dict[str, dict[str, float | None]] = {
    "TinyGPT-V (Phi-2, 2.8B)": {"GQA": 38.9, "VSR": 54.7, "IconQA": 44.7, "VizWiz": 37.8, "HM": 54.0},
    "TinyGPT-V (Phi-1.5, 1.3B)": {"GQA": 34.3, "VSR": 35.8, "IconQA": 37.2, "VizWiz": 28.4, "HM": 50.3},
    "InstructBLIP (13B)": {"GQA": 49.5, "VSR": 52.1, "IconQA": 44.8, "VizWiz": 33.4, "HM": 57.5},
    "BLIP-2 (13B)": {"GQA": 41.0, "VSR": 50.9, "IconQA": 40.6, "VizWiz": 19.6, "HM": 53.7},
    "LLaVA (13B)": {"GQA": 41.3, "VSR": 51.2, "IconQA": 43.0, "VizWiz": None, "HM": None},
    "LLaVA-Phi (2.8B)": {"GQA": None, "VSR": None, "IconQA": 54.1, "VizWiz": 37.6, "HM": None},
    "MoE-LLaVA (1.8Bx4)": {"GQA": 61.5, "VSR": None, "IconQA": None, "VizWiz": 32.6, "HM": None},
}


def comparison(ours: Mapping[str, float | None], label: str = "this checkpoint") -> list[dict]:
    """Rows (model, GQA, VSR, IconQA, VizWiz, HM) with ours first: `ours` maps a benchmark name to
    its paper metric as a fraction (None or absent: not evaluated)."""
    row: dict = {"model": label}
    for name, column in COLUMNS.items():
        value = ours.get(name)
        row[column] = None if value is None else round(100 * value, 1)
    return [row] + [{"model": model, **scores} for model, scores in TABLE2.items()]


def format_table(rows: list[dict]) -> str:
    columns = ["model", *COLUMNS.values()]
    width = max(len(r["model"]) for r in rows) + 2
    lines = [f"{'model':<{width}}" + "".join(f"{c:>9}" for c in columns[1:])]
    for r in rows:
        cells = "".join(f"{('-' if r[c] is None else f'{r[c]:.1f}'):>9}" for c in columns[1:])
        lines.append(f"{r['model']:<{width}}{cells}")
    return "\n".join(lines)
