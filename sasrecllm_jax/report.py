"""Plots of runs: training curves and test AUC on warm and cold rows.

    python -m sasrecllm_jax.report RUN_DIR [RUN_DIR ...] --out curves.png
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sasrecllm_jax.run_folder.metrics_log import read_metrics


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average, debiased so it starts at the first value."""
    out, m = [], 0.0
    for t, v in enumerate(values, 1):
        m = weight * m + (1 - weight) * v
        out.append(m / (1 - weight ** t))
    return out


def plot_runs(runs: list[Path], out: Path) -> Path:
    """Training loss and validation AUC per phase, and test AUC on warm vs cold rows per run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_loss, ax_val, ax_bar) = plt.subplots(1, 3, figsize=(16, 4.5))
    for ax in (ax_loss, ax_val):  # a grid draws more phases than the default 10 colours
        ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)
    names, warm, cold, overall = [], [], [], []
    for run in runs:
        rows = read_metrics(run)
        label = Path(run).name
        for phase in dict.fromkeys(r["phase"] for r in rows):
            tr = [r for r in rows if r["phase"] == phase and r["kind"] == "train" and "loss" in r]
            ev = [r for r in rows if r["phase"] == phase and r["kind"] == "eval" and r.get("all/auc") is not None]
            if tr:  # each point is one batch's loss: drawn faintly, with its moving average on top
                steps, loss = [r["step"] for r in tr], [r["loss"] for r in tr]
                line, = ax_loss.plot(steps, smooth(loss), label=f"{label}:{phase}")
                ax_loss.plot(steps, loss, color=line.get_color(), alpha=0.2, lw=0.8)
            if ev:
                ax_val.plot([r["step"] for r in ev], [r["all/auc"] for r in ev], marker="o", label=f"{label}:{phase}")
        res = Path(run) / "results.json"
        if res.exists():
            test = json.loads(res.read_text())["test"]
            names.append(label)
            overall.append(test["all"]["auc"] or 0)
            warm.append(test["warm"]["auc"] or 0)
            cold.append(test["cold"]["auc"] or 0)
    ax_loss.set(title="training loss (per batch, and its moving average)", xlabel="step", ylabel="BCE")
    ax_val.set(title="validation AUC", xlabel="step", ylabel="AUC")
    for ax in (ax_loss, ax_val):
        if ax.lines:
            ax.legend(fontsize=7)
    if names:
        import numpy as np
        x = np.arange(len(names))
        for off, vals, lab in ((-0.27, overall, "all"), (0, warm, "warm"), (0.27, cold, "cold")):
            bars = ax_bar.bar(x + off, vals, 0.27, label=lab)
            ax_bar.bar_label(bars, fmt="%.3f", fontsize=6)
        ax_bar.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
        ax_bar.set_ylim(0.4, max(0.8, max(overall + warm + cold) + 0.05))
        ax_bar.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax_bar.legend(fontsize=8)
    ax_bar.set(title="test AUC: all / warm / cold")
    fig.tight_layout()
    return _save(fig, out)


def _save(fig, out: Path) -> Path:
    import matplotlib.pyplot as plt
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


FAMILIES = {"pop": "counts", "mf": "ID model", "sasrec": "ID model", "icl": "text LLM", "tallrec": "text LLM",
            "collm_mf": "hybrid", "sasrecllm": "hybrid"}
MARKERS = {"counts": "D", "ID model": "o", "text LLM": "s", "hybrid": "^"}


def zoom_around(ref: dict, points: list[dict], within: float = 0.05) -> float:
    """Half-width of the zoomed plane: wide enough to show every run whose overall AUC is within `within` of
    the reference's (its contenders), with a margin; between 0.01 and `within`."""
    near = [max(abs(p["warm"] - ref["warm"]), abs(p["cold"] - ref["cold"])) for p in points
            if p is not ref and p["all"] is not None and ref["all"] is not None and p["all"] >= ref["all"] - within]
    return min(within, max([0.01] + [1.15 * d for d in near]))


def plot_warm_cold(points: list[dict], out: Path, reference: str | None = None) -> Path:
    """The experiment grid's chart: each method's test AUC on warm rows (x) against cold rows (y), one marker
    per method (a seed group at its mean, with +-1 sd bars), the marker's shape its family; beside it the
    same plane zoomed on the reference run and its contenders (`zoom_around`), and overall
    AUC as sorted bars. The reference's warm and cold AUCs are dashed lines: a point up and to the right of
    both beats it on warm and on cold rows. points: {name, method, all, warm, cold[, all_sd, warm_sd,
    cold_sd, seeds]}; a part without rows is None."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    drawn = [p for p in points if p["warm"] is not None and p["cold"] is not None]
    ref = next((p for p in drawn if p["name"] == reference), None)  # a reference with warm and cold rows
    panels = 3 if ref else 2
    fig, axes = plt.subplots(1, panels, figsize=(6.2 * panels, 5.4))
    colors = plt.get_cmap("tab20").colors
    color = {p["name"]: colors[i % len(colors)] for i, p in enumerate(points)}
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
        ax.set(xlabel="warm AUC (test)", ylabel="cold AUC (test)")
    axes[0].set_title("test AUC, warm vs cold rows" + (f" (dashed: {reference})" if ref else ""))
    if panels == 3:
        zoomed, zoom = axes[1], zoom_around(ref, drawn)
        zoomed.set_xlim(ref["warm"] - zoom, ref["warm"] + zoom)
        zoomed.set_ylim(ref["cold"] - zoom, ref["cold"] + zoom)
        zoomed.axvspan(ref["warm"], ref["warm"] + zoom, ymin=0.5, ymax=1, color="green", alpha=0.07)
        zoomed.set_title(f"within {zoom:.3f} of {reference} (shaded: beats it on warm and cold)")
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
        fig.tight_layout(rect=(0, 0.045 * -(-len(drawn) // ncol) + 0.01, 1, 1))
    else:
        fig.tight_layout()
    return _save(fig, out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sasrecllm_jax.report", description="plot runs")
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=Path("runs.png"))
    args = p.parse_args(argv)
    missing = [r for r in args.runs if not (r / "metrics.jsonl").exists()]
    if missing:
        print(f"error: {missing[0]} has no metrics.jsonl; pass run folders written by train.py", file=sys.stderr)
        return 2
    print(plot_runs(args.runs, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
