"""Markdown tables: a header, rows of cells, and the number formats every summary table shares."""
from __future__ import annotations

import math


def table(header: list[str], rows: list[list]) -> list[str]:
    """A Markdown table as lines; every cell is converted with str()."""
    line = lambda cells: "| " + " | ".join(str(c) for c in cells) + " |"
    return [line(header), "|" + "---|" * len(header), *(line(r) for r in rows)]


def num(value, digits: int = 4) -> str:
    """A metric with `digits` decimals, or '-' for a missing one."""
    if not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def signed(value, digits: int = 4) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:+.{digits}f}"


def interval(lo: float, hi: float, digits: int = 4) -> str:
    return f"[{lo:+.{digits}f}, {hi:+.{digits}f}]"


def paired_text(test: dict | None) -> str:
    """A paired test's "difference [lo, hi]", or '-' where there is none (no test, or too few rows of a label)."""
    if test is None or test["diff"] is None or math.isnan(test["diff"]):
        return "-"
    return f"{signed(test['diff'])} {interval(*test['ci95'])}"
