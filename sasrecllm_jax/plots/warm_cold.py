"""The grid's chart: each method's test AUC on warm rows against cold rows, zoomed on a reference run,
and overall AUC as sorted bars."""
from __future__ import annotations

from pathlib import Path

from sasrecllm_jax.plots.style import run_styles, save_png

FAMILIES = {"pop": "counts", "mf": "ID model", "sasrec": "ID model", "icl": "text LLM", "tallrec": "text LLM",
            "collm_mf": "hybrid", "sasrecllm": "hybrid"}
MARKERS = {"counts": "D", "ID model": "o", "text LLM": "s", "hybrid": "^"}


def zoom_around(ref: dict, points: list[dict], within: float = 0.05) -> float:
    """Half-width of the zoomed plane: wide enough to show every run whose overall AUC is within `within` of
    the reference's (its contenders), with a margin; between 0.01 and `within`."""
    near = [max(abs(p["warm"] - ref["warm"]), abs(p["cold"] - ref["cold"])) for p in points
            if p is not ref and p["all"] is not None and ref["all"] is not None and p["all"] >= ref["all"] - within]
    return min(within, max([0.01] + [1.15 * d for d in near]))


def plot_warm_cold(points: list[dict], out: Path, reference: str | None = None, y_name: str = "cold") -> Path:
    """The experiment grid's chart: each method's test AUC on warm rows (x) against cold rows (y), one marker
    per method (a seed group at its mean, with +-1 sd bars), the marker's shape its family; beside it the
    same plane zoomed on the reference run and its contenders (`zoom_around`), and overall
    AUC as sorted bars. The reference's warm and cold AUCs are dashed lines: a point up and to the right of
    both beats it on warm and on cold rows. points: {name, method, all, warm, cold[, all_sd, warm_sd,
    cold_sd, seeds]}; a part without rows is None. y_name names the y axis's rows ("cold", or "new-item"
    when the points' "cold" holds the AUC on new-item rows)."""
    return save_png(draw_warm_cold(points, reference, y_name), out)


def draw_warm_cold(points: list[dict], reference: str | None = None, y_name: str = "cold"):
    """The figure of `plot_warm_cold`; taller with many methods, so that each bar's name and value keep
    their room (8pt and 7pt)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    drawn = [p for p in points if p["warm"] is not None and p["cold"] is not None]
    ref = next((p for p in drawn if p["name"] == reference), None)  # a reference with warm and cold rows
    panels = 3 if ref else 2
    height = max(5.4, 1.8 + 0.2 * len(points))
    fig = Figure(figsize=(6.2 * panels, height))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels)
    color = {name: s["color"] for name, s in run_styles([p["name"] for p in points]).items()}  # as in runs.png
    planes = [axes[0]] + ([axes[1]] if panels == 3 else [])
    for ax in planes:
        for p in drawn:
            family = FAMILIES.get(p["method"], "hybrid")
            label = p["name"] + (f" ({p['seeds']} seeds)" if p.get("seeds", 1) > 1 else "")
            ax.errorbar(p["warm"], p["cold"], xerr=p.get("warm_sd"), yerr=p.get("cold_sd"), fmt=MARKERS[family],
                        ms=8, color=color[p["name"]], capsize=3, label=label, mec="black", mew=0.5)
        if ref:
            ax.axvline(ref["warm"], color="grey", ls="--", lw=0.8)
            ax.axhline(ref["cold"], color="grey", ls="--", lw=0.8)
        ax.set(xlabel="warm AUC (test)", ylabel=f"{y_name} AUC (test)")
    axes[0].set_title(f"test AUC, warm vs {y_name} rows" + (f"\n(dashed: {reference})" if ref else ""))  # two lines:
    # a long reference name would run into the next panel's title
    if panels == 3:
        zoomed, zoom = axes[1], zoom_around(ref, drawn)
        zoomed.set_xlim(ref["warm"] - zoom, ref["warm"] + zoom)
        zoomed.set_ylim(ref["cold"] - zoom, ref["cold"] + zoom)
        zoomed.axvspan(ref["warm"], ref["warm"] + zoom, ymin=0.5, ymax=1, color="green", alpha=0.07)
        zoomed.set_title(f"within {zoom:.3f} of {reference}\n(shaded: beats it on warm and {y_name})")
    bars = sorted((p for p in points if p["all"] is not None), key=lambda p: p["all"])
    ax = axes[-1]
    ax.barh(range(len(bars)), [p["all"] for p in bars], color=[color[p["name"]] for p in bars])
    for i, p in enumerate(bars):
        if p.get("all_sd"):
            ax.errorbar(p["all"], i, xerr=p["all_sd"], color="black", capsize=3)
        ax.text(p["all"] + (p.get("all_sd") or 0) + 0.003, i, f"{p['all']:.4f}", va="center", fontsize=7)
    ax.set_yticks(range(len(bars)), [p["name"] for p in bars], fontsize=8)
    low = min([p["all"] for p in bars] + [0.5])
    ax.set_xlim(max(0.0, low - 0.05), max([p["all"] for p in bars] + [0.5]) + 0.04)
    if ref and ref["all"] is not None:  # with warm and cold rows it has all rows; a run without either has no ref
        ax.axvline(ref["all"], color="grey", ls="--", lw=0.8)
    ax.set(title="test AUC, all rows", xlabel="AUC")
    if drawn:  # beside the planes, so that no marker hides under it
        ncol = min(len(drawn), 2 * panels)
        fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=ncol, fontsize=8)
        fig.tight_layout(rect=(0, 0.245 / height * -(-len(drawn) // ncol) + 0.01, 1, 1))  # 0.245in a row
    else:
        fig.tight_layout()
    return fig
