"""The grid's summary, read from finished run folders only (results.json, scores.npz, ablation.json):
summary.json, SUMMARY.md (the table, seed means, ablations, paired tests against SASRec and the paper's
claims) and the two charts. `--summary-only` rebuilds it from any set of runs."""
from __future__ import annotations

import json
import time
from pathlib import Path

from sasrecllm_jax.compare import compare, format_rows, fusion_lines, header
from sasrecllm_jax.errors import ConfigError
from sasrecllm_jax.experiments.claims import claims_section
from sasrecllm_jax.experiments.markdown import num, paired_text, table
from sasrecllm_jax.experiments.seeds import method_points, seeds_section
from sasrecllm_jax.plots.curves import plot_runs
from sasrecllm_jax.plots.warm_cold import plot_warm_cold
from sasrecllm_jax.run_folder.files import code_version, paired_tests, read_ablations
from sasrecllm_jax.run_folder.scores import SCORES_FILE


NEW_ITEM_ROWS = 100  # the warm/cold chart plots new-item rows instead of cold ones when every run has this many


def summarise(out: Path) -> dict:
    runs = sorted(p.parent for p in (out / "runs").glob("*/results.json"))
    if not runs:
        raise ConfigError(f"no finished runs under {out / 'runs'} (none has a results.json): run the grid "
                          "first, or point --out at the folder that holds its runs/")
    summary = {r.name: json.loads((r / "results.json").read_text()) for r in runs}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    commits = sorted({r.get("commit", "unknown") for r in summary.values()})
    lines = [f"# {out.name}: test split (table written {time.strftime('%Y-%m-%d')} at {code_version()}; "
             f"runs from commit{'s' if len(commits) > 1 else ''} {', '.join(commits) or '-'})", ""]
    lines += table(["method", "AUC", "UAUC", "warm AUC", "warm UAUC", "cold AUC", "cold UAUC", "new-item AUC",
                    "new-item n", "HR@10", "NDCG@10", "valid AUC", "n test", "train s", "card", "commit"],
                   [[name, *(num(r["test"][part][m]) for part in ("all", "warm", "cold") for m in ("auc", "uauc")),
                     num(r["test"].get("new_item", {}).get("auc")), r["test"].get("new_item", {}).get("n", "-"),
                     *(num(ranking_value(r, m)) for m in ("hr@10", "ndcg@10")),
                     num(r["valid"]["all"]["auc"]), r["test"]["all"]["n"], r["train_time_s"], r["device"],
                     r.get("commit", "unknown")] for name, r in summary.items()])
    ablations = [(r.name, mode, m, paired_tests(ab, "test").get(mode))
                 for r in runs for ab in [read_ablations(r)] for mode, m in ab.get("test", {}).items() if mode != "on"]
    if ablations:
        lines += ["", "Test-time ablations (`python -m sasrecllm_jax.ablate`; the trained model, collaborative inputs "
                      "dropped or shuffled, or a parameter group masked; differences to the run as trained are "
                      "paired on the same rows):", ""]
        lines += table(["run", "ablation", "AUC", "UAUC", "warm AUC", "cold AUC", "new-item AUC", "n test",
                        "AUC - trained [95%]", "new-item AUC - trained [95%]"],
                       [[n, mode, num(m["all"]["auc"]), num(m["all"]["uauc"]), num(m["warm"]["auc"]),
                         num(m["cold"]["auc"]), num(m.get("new_item", {}).get("auc")), m["all"]["n"],
                         *(paired_text((vs or {}).get(part, {}).get("AUC")) for part in ("all", "new_item"))]
                        for n, mode, m, vs in ablations])
    lines += seeds_section(summary)
    lines += paired_section(out, runs)
    lines += claims_section(out, summary)
    reused = {n: r["reused_phases"] for n, r in summary.items() if r.get("reused_phases")}
    if reused:
        lines += ["", "Phases trained once and reused (the phase cache; `train s` counts them at what they cost the "
                      "run that trained them): " + "; ".join(
                          f"{n}: " + ", ".join(f"{ph} from {Path(src).name}" for ph, src in phases.items())
                          for n, phases in reused.items()) + "."]
    capped = {n for n, r in summary.items() if r["device"] == "cpu" and r["config"]["data"].get("cpu_max_rows")}
    if capped:
        lines += ["", f"CPU runs ({', '.join(sorted(capped))}) used the configs' data.cpu_max_rows subset: "
                      "not comparable with full-data GPU runs."]
    (out / "SUMMARY.md").write_text("\n".join(lines) + "\n")
    y_part = "new_item" if all(r["test"].get("new_item", {}).get("n", 0) >= NEW_ITEM_ROWS
                               for r in summary.values()) else "cold"
    plot_warm_cold(method_points(summary, y_part), out / "warm_cold.png", reference="sasrec",
                   y_name=y_part.replace("_", "-"))
    plot_runs(runs, out / "curves.png")
    print("\n".join(lines))
    return summary


def ranking_value(results: dict, metric: str, part: str = "all"):
    """A run's ranking metric on a part of the test positives (None: the run did not rank)."""
    return (results.get("ranking") or {}).get("test", {}).get(part, {}).get(metric)


def paired_section(out: Path, runs: list[Path], base: str = "sasrec") -> list[str]:
    """Each run with per-row scores against SASRec, paired on the same test rows (AUC: DeLong; UAUC: users)."""
    scored = [r for r in runs if (r / SCORES_FILE).exists()]
    base_run = out / "runs" / base
    if base_run not in scored or len(scored) < 2:
        return []
    rows, other_rows = [], []
    for run in [r for r in scored if r != base_run]:
        try:
            rows += format_rows(run.name, compare(base_run, run, "test"))
        except ConfigError:  # scored other rows (a CPU-capped run beside full-data ones)
            other_rows.append(run.name)
    note = f" Left out, scored on other rows: {', '.join(other_rows)}." if other_rows else ""
    lines = ["", f"Paired against {base} on the same test rows (`python -m sasrecllm_jax.compare`; difference = run - "
                 f"{base}; AUC: DeLong's test over rows, UAUC: the mean per-user difference, users as the units; runs "
                 f"without {SCORES_FILE} are older than it).{note}", "",
             *header(base), *rows]
    text = out / "runs" / "tallrec"  # the control a hybrid must beat: ID and text scores mixed after training
    if text in scored and text.name not in other_rows:
        lines += ["", *fusion_lines(base_run, text)]
    return lines
