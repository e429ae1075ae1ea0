"""Training curves as small multiples (one pair of panels per phase name, each with its own step axis)
beside test AUC by part of the test rows, one colour per run everywhere."""
from __future__ import annotations

import json
from pathlib import Path

from sasrecllm_jax.compare import run_names
from sasrecllm_jax.run_folder.metrics_log import read_metrics
from sasrecllm_jax.plots.style import FONT, MIN_FONT, PARTS, chart_style, contrast, run_styles, save_png, smooth

def read_curves(run: Path) -> dict[str, dict]:
    """A run's curves by phase, in the order it trained them: {phase: {"train": (steps, losses),
    "eval": (steps, valid AUCs)}}; a phase without either has an empty pair."""
    rows = read_metrics(run)
    curves = {}
    for phase in dict.fromkeys(r["phase"] for r in rows if r["kind"] in ("train", "eval")):
        tr = [r for r in rows if r["phase"] == phase and r["kind"] == "train" and "loss" in r]
        ev = [r for r in rows if r["phase"] == phase and r["kind"] == "eval" and r.get("all/auc") is not None]
        curves[phase] = {"train": ([r["step"] for r in tr], [r["loss"] for r in tr]),
                         "eval": ([r["step"] for r in ev], [r["all/auc"] for r in ev])}
    return curves


def read_test(run: Path) -> dict | None:
    """The test results of a finished run ({part: {auc, uauc, logloss, n}}), or None before it finished."""
    res = Path(run) / "results.json"
    return json.loads(res.read_text())["test"] if res.exists() else None


def shown_parts(tests: list[dict]) -> list[str]:
    """The parts a bar chart shows: every part some run has, in PARTS' order, except cold where every run splits
    its cold rows into new user and new item (older runs have all / warm / cold only)."""
    present = [p for p in PARTS if any(p in t for t in tests)]
    finer = all("new_user" in t or "new_item" in t for t in tests)
    return [p for p in present if not (p == "cold" and finer)]


PANEL_W, LOSS_H, AUC_H, BARS_H = 3.4, 1.9, 1.5, 3.2  # inches
MAX_COLUMNS = 4  # phase panels side by side; more phases wrap onto further rows
BAR_W, MAX_W = 0.24, 30.0  # inches: a bar at least this wide while the figure stays under MAX_W
MAX_GROUP, MIN_BARS_W = 1.3, 6.5  # inches: the widest group of bars; the narrowest bar chart (its key above it)


def plot_runs(runs: list[Path], out: Path) -> Path:
    """runs.png: the training curves of each phase (`draw_phase`) above the test AUC by part (`draw_test_bars`),
    one colour per run throughout (`run_styles`)."""
    with chart_style():
        return save_png(draw_runs(runs), out)


def draw_runs(runs: list[Path]):
    """The figure of `plot_runs`. Small multiples: one column per phase name, each with its own step axis,
    training loss above and validation AUC below; a phase shared by several runs (a reused SASRec) is one
    curve with each run's markers on it in turn. Below them the test AUC of every finished run, one group of
    bars per run in its colour, hatched by part. The run legend and the key sit in a column of their own.
    Each axes is labelled for a reader of the figure: "loss PHASE", "valid_auc PHASE", "test_auc", "legend";
    a run's artists carry its name as gid (a bar: "RUN|PART")."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    names = run_names(runs)
    styles = run_styles(names)
    curves = {n: read_curves(r) for n, r in zip(names, runs)}
    tests = {n: t for n, r in zip(names, runs) if (t := read_test(r)) is not None and set(t) & set(PARTS)}
    phases = list(dict.fromkeys(p for c in curves.values() for p in c))
    cols = max(1, min(len(phases), MAX_COLUMNS))
    n_bars = len(tests) * len(shown_parts(list(tests.values())))
    width = min(MAX_W, max(cols * PANEL_W, n_bars * BAR_W + 1.0, MIN_BARS_W if tests else 0))
    legend_w = _legend_width(names)
    heights = [LOSS_H + AUC_H] * -(-len(phases) // cols) + ([BARS_H] if tests else [])
    with chart_style():
        fig = Figure(figsize=(width + legend_w, sum(heights) + 0.6), layout="constrained")  # not pyplot's: a
        FigureCanvasAgg(fig)  # caller that only looks at the figure leaves nothing open
        grid = fig.add_gridspec(len(heights), cols + 1, height_ratios=heights,
                                width_ratios=[width / cols] * cols + [legend_w])
        for i, phase in enumerate(phases):
            draw_phase(*_phase_axes(fig, grid[i // cols, i % cols], first=i % cols == 0), phase,
                       {n: curves[n][phase] for n in names if phase in curves[n]}, styles)
        if tests:
            bars_ax, bars_w = _bars_axes(fig, grid[-1, :cols], width, len(tests))
            draw_test_bars(bars_ax, tests, styles, width_in=bars_w, height_in=BARS_H)
        draw_legend(fig.add_subplot(grid[:, cols]), styles, curves=bool(phases), height_in=sum(heights))
        if tests:
            room_for_values(fig, bars_ax)
    return fig


def _phase_axes(fig, cell, first: bool) -> tuple:
    """A phase's two panels in one grid cell: loss above, validation AUC below on the same steps; the first
    column names the y axes."""
    inner = cell.subgridspec(2, 1, height_ratios=[LOSS_H, AUC_H])
    loss_ax = fig.add_subplot(inner[0])
    auc_ax = fig.add_subplot(inner[1], sharex=loss_ax)
    if first:
        loss_ax.set_ylabel("training loss")
        auc_ax.set_ylabel("valid AUC")
    return loss_ax, auc_ax


def _bars_axes(fig, cell, width: float, n_runs: int) -> tuple:
    """The bar chart's axes and its width in inches: the whole row, or for a few runs a narrower chart on the
    left (wide enough for its key)."""
    need = max(MIN_BARS_W, n_runs * MAX_GROUP + 1.0)
    if need < width - 0.5:
        return fig.add_subplot(cell.subgridspec(1, 2, width_ratios=[need, width - need])[0]), need
    return fig.add_subplot(cell), width


def room_for_values(fig, ax, tries: int = 4) -> None:
    """Raise the top of the bar chart until every printed value lies inside it (the room a value needs depends
    on the axes' height, known only once the figure is laid out)."""
    texts = [t for t in ax.texts if t.get_gid() == "bar value"]
    for _ in range(tries):
        fig.canvas.draw()
        if not texts:
            return
        box = ax.get_window_extent()
        over = max(t.get_window_extent().y1 for t in texts) - (box.y1 - 3)
        if over <= 0:
            return
        low, high = ax.get_ylim()
        ax.set_ylim(low, high + (over + 2) * (high - low) / box.height)


def _legend_width(names: list[str]) -> float:
    """Inches for the legend column: the longest run name at FONT, and the handle."""
    return 0.9 + max([len(n) for n in names] + [24]) * FONT * 0.6 / 72


def draw_phase(loss_ax, auc_ax, phase: str, by_run: dict[str, dict], styles: dict) -> None:
    """One phase's panels: each distinct loss curve (per batch, faint; its moving average, solid) and validation
    AUC curve once, in the colour of the first run that has it; every run that has it puts its markers on it."""
    loss_ax.set_label(f"loss {phase}")
    auc_ax.set_label(f"valid_auc {phase}")
    loss_ax.set_title(f"phase: {phase}")
    low, high = [], []
    for steps, loss, owners in _distinct(by_run, "train"):
        color = styles[owners[0]]["color"]
        loss_ax.plot(steps, loss, color=color, alpha=0.25, lw=0.6, gid=owners[0])
        mean = smooth(loss)
        _draw_shared(loss_ax, steps, mean, owners, styles, marks=max(8, 2 * len(owners)))
        low.append(min(mean)), high.append(max(mean))
        low.append(_quantile(loss, 0.02)), high.append(_quantile(loss, 0.98))
    for steps, auc, owners in _distinct(by_run, "eval"):
        _draw_shared(auc_ax, steps, auc, owners, styles, marks=len(steps))
    if low:  # a few wild batches would squash the moving averages: the y axis keeps 96% of them in view
        pad = 0.05 * (max(high) - min(low) or 1.0)
        loss_ax.set_ylim(min(low) - pad, max(high) + pad)
    for ax, what in ((loss_ax, "training steps"), (auc_ax, "evaluations")):
        if not ax.lines:
            ax.text(0.5, 0.5, f"no {what} logged", transform=ax.transAxes, ha="center", va="center", color="grey")
    loss_ax.tick_params(labelbottom=False)
    auc_ax.set_xlabel("step (of this phase)")
    for ax in (loss_ax, auc_ax):
        ax.grid(alpha=0.3, lw=0.5)


def _distinct(by_run: dict[str, dict], kind: str) -> list[tuple[list, list, list[str]]]:
    """(steps, values, the runs that logged exactly these) for each distinct curve of one kind."""
    seen: dict[tuple, list[str]] = {}
    for name, c in by_run.items():
        steps, values = c[kind]
        if steps:
            seen.setdefault((tuple(steps), tuple(values)), []).append(name)
    return [(list(s), list(v), owners) for (s, v), owners in seen.items()]


def _draw_shared(ax, steps: list, values: list, owners: list[str], styles: dict, marks: int) -> None:
    """The curve in its first owner's colour and line style, and `marks` markers spread along it, dealt to its
    owners in turn (each run's own colour and marker); a run left without a point shares the last one, smaller."""
    first = styles[owners[0]]
    ax.plot(steps, values, color=first["color"], ls=first["linestyle"], lw=1.4, gid=owners[0])
    at = sorted({round(j * (len(steps) - 1) / max(1, marks - 1)) for j in range(marks)}) if len(steps) > 1 else [0]
    for i, name in enumerate(owners):
        mine = at[i::len(owners)] or [at[i % len(at)]]
        size = 6 if len(mine) > 1 or i < len(at) else max(2.5, 6 - 1.2 * (i - len(at) + 1))
        ax.plot([steps[j] for j in mine], [values[j] for j in mine], ls="none", marker=styles[name]["marker"], ms=size,
                color=styles[name]["color"], mec="black", mew=0.4, gid=name, zorder=3)


def _quantile(values: list[float], q: float) -> float:
    """The q-quantile of values (nearest rank)."""
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def draw_test_bars(ax, tests: dict[str, dict], styles: dict, width_in: float, height_in: float) -> None:
    """Test AUC per run (one group of bars in the run's colour) and part of the test rows (`shown_parts`; the
    hatch tells the part). Each bar carries its value, turned upright, unless the bars are too narrow for 7pt
    text; a part without rows, or that an older run did not record, is marked n/a. A group is at most
    MAX_GROUP inches wide, and the run names lie flat where they fit."""
    ax.set_label("test_auc")
    parts = shown_parts(list(tests.values()))
    n = len(tests)
    span = max(n, width_in * 0.9 / MAX_GROUP)  # groups the axes has room for; fewer are centred
    group_in = width_in * 0.9 / span
    bar = 0.8 / len(parts)
    labelled = group_in * 72 * bar >= MIN_FONT + 2
    values = [t[p]["auc"] for t in tests.values() for p in parts if t.get(p, {}).get("auc") is not None]
    low = min([0.4] + [v - 0.05 for v in values])
    room = 30 / (height_in * 72 * 0.8) if labelled else 0.03  # an upright "0.734" is about 30pt tall
    high = (max(values + [0.5]) - low * room) / (1 - room)
    for i, (name, t) in enumerate(tests.items()):
        for j, part in enumerate(parts):
            _draw_bar(ax, i - 0.4 + bar * (j + 0.5), bar, t.get(part, {}).get("auc"), low, styles[name]["color"],
                      part, f"{name}|{part}", labelled)
    ax.set_ylim(low, high)
    ax.set_xlim((n - 1) / 2 - span / 2, (n - 1) / 2 + span / 2)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    flat = max(len(name) for name in tests) * FONT * 0.6 / 72 < 0.8 * width_in / n
    ax.set_xticks(range(n), list(tests), rotation=0 if flat else 30, ha="center" if flat else "right")
    ax.set_ylabel("test AUC")
    ax.grid(axis="y", alpha=0.3, lw=0.5)
    handles = _part_handles(tests, parts)  # the key, titled, above the chart: as many entries a row as fit
    entry_in = max(len(h.get_label()) for h in handles) * FONT * 0.6 / 72 + 0.7
    title = "test AUC by part of the test rows" + ("" if labelled else " (too many bars to print values)")
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False, borderaxespad=0.2,
              ncol=max(1, min(len(handles), int(width_in / entry_in))), title=title, title_fontsize=FONT + 1)


def _draw_bar(ax, x: float, width: float, auc: float | None, low: float, color, part: str, gid: str,
              labelled: bool) -> None:
    """One bar from the axis' floor to auc, hatched by part, its value above it; or n/a where auc is None."""
    if auc is None:
        if labelled:
            ax.text(x, low, " n/a", rotation=90, ha="center", va="bottom", fontsize=MIN_FONT, color="grey", gid=gid)
        return
    ax.bar(x, auc - low, width, bottom=low, color=color, hatch=PARTS[part][1], lw=0, edgecolor=contrast(color),
           gid=gid)
    if labelled:
        ax.annotate(f"{auc:.3f}", (x, auc), xytext=(0, 2), textcoords="offset points", rotation=90, ha="center",
                    va="bottom", fontsize=MIN_FONT, gid="bar value")


def _part_handles(tests: dict[str, dict], parts: list[str]) -> list:
    """The key to the hatches (with the part's row count where every run has the same), and the chance line."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    handles = []
    for part in parts:
        counts = {t[part].get("n") for t in tests.values() if part in t}
        rows = f" ({counts.pop()} rows)" if len(counts) == 1 and None not in counts else ""
        handles.append(Patch(facecolor="lightgrey", edgecolor="black", hatch=PARTS[part][1], lw=0.5,
                             label=PARTS[part][0] + rows))
    return handles + [Line2D([], [], color="grey", lw=0.8, ls="--", label="chance (0.5)")]


def draw_legend(ax, styles: dict, curves: bool, height_in: float) -> None:
    """The runs (colour, marker, line style) and, where there are curves, how to read them; in columns when
    the runs do not fit the figure's height."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    ax.set_label("legend")
    ax.axis("off")
    handles = [Line2D([], [], color=s["color"], marker=s["marker"], ls=s["linestyle"], mec="black", mew=0.4,
                      label=name) for name, s in styles.items()]
    if curves:
        handles += [Patch(visible=False, label=""),
                    Line2D([], [], color="grey", alpha=0.35, lw=0.6, label="loss of each logged batch"),
                    Line2D([], [], color="grey", lw=1.4, label="its moving average (EMA 0.9)"),
                    Line2D([], [], color="grey", marker="o", ls="none", label="a run's marker on a curve: its\n"
                           "values; several runs' markers on\none curve: they logged the same")]
    rows_fit = max(4, int(height_in * 72 / (FONT * 2.0)))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(0, 1), ncol=-(-len(handles) // rows_fit),
              frameon=False, title="runs", alignment="left", borderaxespad=0)
