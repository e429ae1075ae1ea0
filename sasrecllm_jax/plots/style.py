"""What every chart shares: fonts, the run palette (one colour, marker and line style per run), the
hatches of the parts of the test rows, and saving."""
from __future__ import annotations

from pathlib import Path

FONT = 8  # points; nothing on a chart is drawn smaller than MIN_FONT
MIN_FONT = 7
RUN_MARKERS = "osD^vP*Xh<>p"
LINESTYLES = ("-", "--", ":", "-.")
# the parts of the test rows a bar chart can show, in order: label, hatch (the run's colour is the face)
PARTS = {"all": ("all", ""), "warm": ("warm", "////"), "cold": ("cold", "...."),
         "new_user": ("new user", "xxx"), "new_item": ("new item", "\\\\\\\\")}


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average, debiased so it starts at the first value."""
    out, m = [], 0.0
    for t, v in enumerate(values, 1):
        m = weight * m + (1 - weight) * v
        out.append(m / (1 - weight ** t))
    return out


def run_styles(names: list[str]) -> dict[str, dict]:
    """One look per run, the same in every panel: {name: {color, marker, linestyle}}. Colours from tab20, its
    ten strong hues first and then their light twins; the marker cycles with another period, so that two runs
    of one hue differ by marker too, and the line style changes after every 20 runs."""
    import matplotlib
    tab20 = matplotlib.colormaps["tab20"].colors
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return {n: {"color": tab20[order[i % 20]], "marker": RUN_MARKERS[i % len(RUN_MARKERS)],
                "linestyle": LINESTYLES[(i // 20) % len(LINESTYLES)]} for i, n in enumerate(dict.fromkeys(names))}


def chart_style():
    """The charts' text sizes, kept while a figure is drawn and saved (ticks are made when drawn)."""
    import matplotlib
    return matplotlib.rc_context({"font.size": FONT, "axes.titlesize": FONT + 1, "legend.fontsize": FONT})


def contrast(color) -> str:
    """Hatch lines that show on the bar: black on a light colour, white on a dark one."""
    r, g, b = color[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def save_png(fig, out: Path) -> Path:
    """Write fig as a PNG at 120 dpi (creating the folder), and close it if pyplot holds it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    if fig.canvas.manager is not None:
        import matplotlib.pyplot as plt
        plt.close(fig)
    return out
