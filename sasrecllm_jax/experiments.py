"""The experiment grid: every method on one dataset, then one summary table and chart.

    python -m sasrecllm_jax.experiments ml1m                       # every method, seed 0
    python -m sasrecllm_jax.experiments ml1m --methods sasrec tallrec --seeds 0 1
    python -m sasrecllm_jax.experiments ml1m --summary-only        # rebuild the table from finished runs
    python -m sasrecllm_jax.experiments ml1m --methods sasrecllm_dual_stage --set model.mapper.hidden=64 --tag mapper64
    python -m sasrecllm_jax.experiments ml1m --methods sasrecllm_dual_stage --ablate   # + test-time ablations

Each method's config is configs/experiments/DATASET/METHOD.yaml. Runs go to results/DATASET/runs/NAME
(NAME = METHOD, METHOD-seedN for seeds other than 0, then -TAG with --tag); a run whose results.json
exists is skipped. Phases shared by several methods (SASRec's, TALLRec's LoRA phase, MF's) are trained
once: runs share results/DATASET/phase_cache (train.phase_cache; --no-phase-cache trains every phase).
Writes results/DATASET/summary.json ({name: results.json}), SUMMARY.md (with mean +- sd over seeds where a
method ran with several), warm_cold.png (test AUC on warm vs cold rows per method) and curves.png (training).
On a CPU the configs' data.cpu_max_rows apply (a documented subset), and the table says so.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

from sasrecllm_jax.config import ConfigError, SASRecConfig

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["pop", "mf", "sasrec", "icl", "tallrec", "collm_mf", "sasrecllm_dual_stage",
           "sasrecllm_hierarchical_freezing", "sasrecllm_plug_and_play"]


def run_grid(dataset: str, methods: list[str], seeds: list[int], out: Path, overrides: list[str], tag: str = "",
             ablate: bool = False, phase_cache: bool = True) -> None:
    from sasrecllm_jax.components import HostCache
    from sasrecllm_jax.config import load_config
    from sasrecllm_jax.train.loop import train_and_evaluate
    host_cache = HostCache()  # the backbone is read and each split encoded once for the whole grid
    for method in methods:
        cfg_path = ROOT / "configs" / "experiments" / dataset / f"{method}.yaml"
        for seed in seeds if method not in ("icl", "pop") else [0]:  # nothing of theirs is random
            name = (method if seed == 0 else f"{method}-seed{seed}") + (f"-{tag}" if tag else "")
            workdir = out / "runs" / name
            if (workdir / "results.json").exists():
                print(f"{name}: done, skipped")
            else:
                cache = [f"train.phase_cache={out / 'phase_cache'}"] if phase_cache else []
                cfg = load_config(cfg_path, [f"train.seed={seed}", *cache, *overrides])
                print(f"=== {name} ({cfg_path.relative_to(ROOT)}{''.join(' --set ' + o for o in overrides)})")
                train_and_evaluate(cfg, workdir, resume=workdir.exists(), config_path=str(cfg_path),
                                   host_cache=host_cache)
            done = json.loads((workdir / "ablation.json").read_text()).get("test", {}) \
                if (workdir / "ablation.json").exists() else {}
            missing = [mode for mode in ("drop", "shuffle") if mode not in done]  # a stopped grid resumes them
            if ablate and missing and (workdir / "results.json").exists() and json.loads(
                    (workdir / "results.json").read_text())["config"]["train"]["method"] in ("sasrecllm", "collm_mf"):
                from sasrecllm_jax.ablate import ablate as run_ablation
                run_ablation(workdir, tuple(missing), "test")


def summarise(out: Path) -> dict:
    runs = sorted(p.parent for p in (out / "runs").glob("*/results.json"))
    if not runs:
        raise ConfigError(f"no finished runs under {out / 'runs'} (none has a results.json): run the grid "
                          "first, or point --out at the folder that holds its runs/")
    summary = {r.name: json.loads((r / "results.json").read_text()) for r in runs}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    fmt = lambda v: f"{v:.4f}" if isinstance(v, (int, float)) else "-"
    from sasrecllm_jax.report import code_version
    commits = sorted({r.get("commit", "unknown") for r in summary.values()})
    lines = [f"# {out.name}: test split (table written {time.strftime('%Y-%m-%d')} at {code_version()}; "
             f"runs from commit{'s' if len(commits) > 1 else ''} {', '.join(commits) or '-'})", "",
             "| method | AUC | UAUC | warm AUC | warm UAUC | cold AUC | cold UAUC | valid AUC | n test | train s | card | commit |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in summary.items():
        t = r["test"]
        lines.append(f"| {name} | {fmt(t['all']['auc'])} | {fmt(t['all']['uauc'])} | {fmt(t['warm']['auc'])} | "
                     f"{fmt(t['warm']['uauc'])} | {fmt(t['cold']['auc'])} | {fmt(t['cold']['uauc'])} | "
                     f"{fmt(r['valid']['all']['auc'])} | {t['all']['n']} | {r['train_time_s']} | {r['device']} | "
                     f"{r.get('commit', 'unknown')} |")
    ablations = [(r.name, mode, m) for r in runs if (r / "ablation.json").exists()
                 for mode, m in json.loads((r / "ablation.json").read_text()).get("test", {}).items() if mode != "on"]
    if ablations:
        lines += ["", "Test-time ablations (`python -m sasrecllm_jax.ablate`; the trained model, collaborative inputs "
                      "dropped or shuffled):", "",
                  "| run | collab | AUC | UAUC | warm AUC | cold AUC | n test |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {n} | {mode} | {fmt(m['all']['auc'])} | {fmt(m['all']['uauc'])} | {fmt(m['warm']['auc'])} | "
                  f"{fmt(m['cold']['auc'])} | {m['all']['n']} |" for n, mode, m in ablations]
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
    from sasrecllm_jax.report import plot_runs, plot_warm_cold
    plot_warm_cold(method_points(summary), out / "warm_cold.png", reference="sasrec")
    plot_runs(runs, out / "curves.png")
    print("\n".join(lines))
    return summary


SEED_COLUMNS = [("AUC", "all", "auc"), ("UAUC", "all", "uauc"), ("warm AUC", "warm", "auc"),
                ("cold AUC", "cold", "auc")]


def seed_groups(summary: dict) -> dict[str, list[str]]:
    """Runs of one method (and tag) that differ only in the seed, scored on the same number of test rows:
    {name without -seedN: [run names]}, groups of two or more only. A run's seed is its config's."""
    groups: dict[tuple, list[str]] = {}
    for name, r in summary.items():
        seed = r["config"]["train"]["seed"]
        base = name.replace(f"-seed{seed}", "", 1) if seed else name
        groups.setdefault((base, r["test"]["all"]["n"]), []).append(name)
    return {base: names for (base, _), names in groups.items() if len(names) > 1}


def seeds_section(summary: dict) -> list[str]:
    """Mean and sample standard deviation over seeds of each method run with several: how much a reseed
    moves a method, which the paired test over test rows cannot say (docs/RESULTS.md section 7)."""
    groups = seed_groups(summary)
    if not groups:
        return []
    lines = ["", "Across seeds (mean +- sample standard deviation over the seeds; a method's runs that differ only "
                 "in train.seed):", "", f"| method | seeds | {' | '.join(c for c, _, _ in SEED_COLUMNS)} | valid AUC |",
             "|---|---|" + "---|" * (len(SEED_COLUMNS) + 1)]
    for base, names in groups.items():
        cells = [mean_sd([summary[n]["test"][part][field] for n in names]) for _, part, field in SEED_COLUMNS]
        cells.append(mean_sd([summary[n]["valid"]["all"]["auc"] for n in names]))
        seeds = ", ".join(str(summary[n]["config"]["train"]["seed"]) for n in names)
        commits = sorted({summary[n].get("commit", "unknown") for n in names})
        note = f" (commits {', '.join(commits)})" if len(commits) > 1 else ""
        lines.append(f"| {base}{note} | {seeds} | {' | '.join(cells)} |")
    return lines


def method_points(summary: dict) -> list[dict]:
    """One point per method for the warm/cold chart: a seed group at its mean (with sample sd), other runs
    as they are. Named like the table's rows (a group by its seed-0 name)."""
    grouped = {n: base for base, names in seed_groups(summary).items() for n in names}
    points, done = [], set()
    for name, r in summary.items():
        base = grouped.get(name, name)
        if base in done:
            continue
        done.add(base)
        names = [n for n in summary if grouped.get(n, n) == base]
        point = {"name": base, "method": r["method"], "seeds": len(names)}
        for part in ("all", "warm", "cold"):
            point[part], point[f"{part}_sd"] = mean_and_sd([summary[n]["test"][part]["auc"] for n in names])
        points.append(point)
    return points


def mean_and_sd(values: list) -> tuple:
    """Mean and sample standard deviation (None for one value); (None, None) if any value is None."""
    if any(v is None for v in values):
        return None, None
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return mean, sd


def mean_sd(values: list) -> str:
    mean, sd = mean_and_sd(values)
    return "-" if mean is None else f"{mean:.4f}" + (f" +- {sd:.4f}" if sd is not None else "")


def paired_section(out: Path, runs: list[Path], base: str = "sasrec") -> list[str]:
    """Each run with per-row scores against SASRec, paired on the same test rows (AUC: DeLong; UAUC: users)."""
    from sasrecllm_jax.compare import compare, format_rows, fusion_lines, header
    from sasrecllm_jax.evaluate import SCORES_FILE
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


CLAIMS = [  # (claim, baseline run, rows, relation): the paper's table, as issue 5 states its targets
    ("AUC > SASRec", "sasrec", "all", ">"), ("warm AUC >= SASRec", "sasrec", "warm", ">="),
    ("cold AUC > SASRec", "sasrec", "cold", ">"), ("AUC > TALLRec", "tallrec", "all", ">"),
    ("cold AUC > TALLRec", "tallrec", "cold", ">")]


def claims_section(out: Path, summary: dict) -> list[str]:
    """The paper's claims read on the SASRecLLM run that is best on valid AUC (the selection a researcher
    may make without looking at test), each against its baseline: the test AUCs, and where both runs kept
    their scores the paired difference's 95% interval and where it lies (above zero: the run is better
    beyond the test rows' noise; covers: not resolved; below: worse). One seed: see docs/RESULTS.md section 7."""
    from sasrecllm_jax.compare import compare
    hybrids = {n: r for n, r in summary.items() if r.get("method") == "sasrecllm" and r["valid"]["all"]["auc"] is not None}
    if not hybrids or not {"sasrec", "tallrec"} <= set(summary):
        return []
    best = max(hybrids, key=lambda n: hybrids[n]["valid"]["all"]["auc"])
    paired = {}
    for base in ("sasrec", "tallrec"):
        try:
            paired[base] = compare(out / "runs" / base, out / "runs" / best)
        except ConfigError:  # no scores.npz (an older run), or scored on other rows
            paired[base] = None
    lines = ["", f"The paper's claims, on the SASRecLLM run best on valid AUC: {best} (valid AUC "
                 f"{hybrids[best]['valid']['all']['auc']:.4f}, best of {len(hybrids)}); test split:", "",
             f"| claim | {best} | baseline | difference | paired 95% interval | interval vs zero | holds |",
             "|---|---|---|---|---|---|---|"]
    for claim, base, part, rel in CLAIMS:
        a, b = summary[base]["test"][part]["auc"], summary[best]["test"][part]["auc"]
        if a is None or b is None:
            lines.append(f"| {claim} | - | - | - | - | - | - |")
            continue
        if summary[base]["test"][part]["n"] != summary[best]["test"][part]["n"]:  # e.g. CPU runs of other caps
            lines.append(f"| {claim} | {b:.4f} | {a:.4f} | - | - | - | not comparable: {summary[best]['test'][part]['n']}"
                         f" vs {summary[base]['test'][part]['n']} test rows |")
            continue
        interval, side = interval_vs_zero(paired[base][part]["AUC"] if paired[base] else None)
        holds = (b > a) if rel == ">" else (b >= a)
        lines.append(f"| {claim} | {b:.4f} | {a:.4f} | {b - a:+.4f} | {interval} | {side} | {'yes' if holds else 'no'} |")
    lines += fusion_control(out, summary, best)
    return lines + seed_claims(summary, best) + kept_start_note(best, hybrids[best]) + own_encoder_note(summary, best)


def interval_vs_zero(test: dict | None) -> tuple[str, str]:
    """A paired test's 95% interval and where it lies: above zero, below, or covering it ("-" without a test,
    or with too few rows of a label)."""
    if test is None or math.isnan(test["diff"]):
        return "-", "-"
    lo, hi = test["ci95"]
    return f"[{lo:+.4f}, {hi:+.4f}]", "above" if lo > 0 else ("below" if hi < 0 else "covers")


def fusion_control(out: Path, summary: dict, best: str) -> list[str]:
    """A claims row that is ours, not the paper's: the hybrid against the late fusion of its own encoder's
    and TALLRec's scores (compare.late_fusion, the weight picked on valid). Both signals reach the hybrid;
    if a weighted sum after training does as well, the fusion inside the LLM adds nothing. At 1f2ddfd on
    ML-1M it did better than every hybrid (docs/RESULTS.md section 2)."""
    from sasrecllm_jax.compare import late_fusion, paired_parts, paired_scores
    own = own_encoder_runs(summary, best)
    if not own or "tallrec" not in summary:
        return []
    encoder = "sasrec" if "sasrec" in own else own[0]
    runs = out / "runs"
    try:
        fused = late_fusion(runs / encoder, runs / "tallrec")
        rows, mine = paired_scores(runs / encoder, runs / best, "test")
    except ConfigError:  # no scores.npz, or scored on other rows
        return []
    test = paired_parts(rows, fused["test_scores"], mine["score"])["all"]["AUC"]
    if math.isnan(test["diff"]):
        return []
    interval, side = interval_vs_zero(test)
    a, b = test["auc_a"], test["auc_b"]
    return [f"| control: AUC > late fusion of {encoder} + tallrec (w = {fused['weight_b']:.2f} on {fused['valid']}) | "
            f"{b:.4f} | {a:.4f} | {b - a:+.4f} | {interval} | {side} | {'yes' if b > a else 'no'} |"]


def seed_claims(summary: dict, best: str) -> list[str]:
    """The claims again on means over seeds, where the chosen hybrid's method and the baseline each ran
    with two or more: one seed's lead can be the seed's (docs/RESULTS.md section 7)."""
    groups = seed_groups(summary)
    group_of = {n: names for names in groups.values() for n in names}
    if best not in group_of:
        return []
    rows = []
    for claim, base, part, rel in CLAIMS:
        if base not in group_of or summary[base]["test"][part]["n"] != summary[best]["test"][part]["n"]:
            continue
        mine, theirs = ([summary[n]["test"][part]["auc"] for n in group_of[name]] for name in (best, base))
        (b, _), (a, _) = mean_and_sd(mine), mean_and_sd(theirs)
        if a is None or b is None:
            continue
        holds = (b > a) if rel == ">" else (b >= a)
        rows.append(f"| {claim} | {mean_sd(mine)} ({len(mine)}) | {mean_sd(theirs)} ({len(theirs)}) | {b - a:+.4f} | "
                    f"{'yes' if holds else 'no'} |")
    if not rows:
        return []
    return ["", f"The same claims on means over seeds (mean +- sd (seeds)), {best}'s method against each baseline's:",
            "", "| claim | hybrid | baseline | difference of means | holds |", "|---|---|---|---|---|", *rows]


def kept_start_note(name: str, results: dict) -> list[str]:
    """A line when the run's last phase handed on its step-0 params (eval_at_start, and no later evaluation
    beat the start on valid): the run is then what that phase started from, e.g. SASRec itself under
    model.mapper.fusion: residual, and the table says nothing about what the phase's training adds."""
    last = (results.get("phases") or [None])[-1]
    if results.get("timing", {}).get(last, {}).get("best_step") != 0:
        return []
    return ["", f"Note: {name}'s last phase ({last}) handed on its step-0 parameters: no evaluation after its start "
                f"beat the start on valid, so the run is what that phase started from."]


def sasrec_settings(summary: dict, name: str) -> dict:
    """A run's model.sasrec with today's defaults filled in: a run from before a field existed had its default."""
    return {**dataclasses.asdict(SASRecConfig()), **summary[name]["config"]["model"]["sasrec"]}


def own_encoder_runs(summary: dict, best: str) -> list[str]:
    """The SASRec runs whose encoder settings are the hybrid's own (the reference `sasrec`, or e.g. sasrec_counts)."""
    mine = sasrec_settings(summary, best)
    return [n for n, r in summary.items() if r.get("method") == "sasrec" and sasrec_settings(summary, n) == mine]


def own_encoder_note(summary: dict, best: str) -> list[str]:
    """Lines when the chosen hybrid's SASRec is not the reference one (e.g. model.sasrec.bias: counts): the
    claims above are against the reference SASRec, and its own encoder run alone (and pop) is the fair bar."""
    mine = sasrec_settings(summary, best)
    if mine == sasrec_settings(summary, "sasrec"):
        return []
    own = own_encoder_runs(summary, best)
    auc = lambda n, part: summary[n]["test"][part]["auc"]
    aucs = lambda n: " / ".join("-" if auc(n, p) is None else f"{auc(n, p):.4f}" for p in ("all", "warm", "cold"))
    bars = [f"{n} {aucs(n)}" for n in own + [n for n, r in summary.items() if r.get("method") == "pop"]]
    return ["", f"Note: {best}'s SASRec is not the reference one (model.sasrec = {mine}): the claims above measure "
                f"it against the reference SASRec. Its fair bar is its own encoder alone"
                f"{' and the counts' if len(bars) > len(own) else ''}, test AUC all / warm / cold: "
                f"{'; '.join(bars) if bars else 'not run (run sasrec with the same model.sasrec)'}; "
                f"{best}: {aucs(best)}."]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sasrecllm_jax.experiments", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help="a folder name under configs/experiments/ (ml1m)")
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--out", type=Path, default=None, help="default: results/DATASET")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--tag", default="", help="suffix of the run names, for variants made with --set "
                   "(e.g. --set model.mapper.hidden=64 --tag mapper64)")
    p.add_argument("--ablate", action="store_true", help="after each hybrid run, its test-time ablations "
                   "(collaborative inputs dropped, shuffled)")
    p.add_argument("--no-phase-cache", action="store_true", help="train every phase of every run, even one "
                   "another run already trained on identical inputs")
    p.add_argument("--summary-only", action="store_true")
    p.add_argument("--no-summary", action="store_true", help="run, but leave the tables and charts to a later "
                   "--summary-only (several grid processes writing into one --out)")
    args = p.parse_args(argv)
    out = (args.out or ROOT / "results" / args.dataset).absolute()
    unknown = [m for m in args.methods if not (ROOT / "configs" / "experiments" / args.dataset / f"{m}.yaml").exists()]
    if unknown:
        print(f"error: no config for {unknown} in configs/experiments/{args.dataset}/", file=sys.stderr)
        return 2
    from sasrecllm_jax.errors import KNOWN_ERRORS
    try:
        if not args.summary_only:
            run_grid(args.dataset, args.methods, args.seeds, out, args.overrides, args.tag, args.ablate,
                     not args.no_phase_cache)
        if not args.no_summary:
            summarise(out)
    except KNOWN_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C, or a deadline's SIGINT (bench/device_run.sh: `timeout -s INT`)
        print(f"stopped: interrupted. Finished runs are kept under {out / 'runs'}; the same command skips them, "
              "resumes a cut run from its last evaluation and redoes missing ablations", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
