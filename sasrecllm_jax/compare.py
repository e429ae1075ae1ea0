"""Is run B better than run A? A paired test of their AUCs and UAUCs on the same rows, for all, warm and
cold rows.

    python -m sasrecllm_jax.compare results/ml1m/runs/sasrec results/ml1m/runs/sasrecllm_dual_stage
    python -m sasrecllm_jax.compare BASE RUN [RUN ...] --split valid_small
    python -m sasrecllm_jax.compare results/ml1m/runs/sasrec results/ml1m/runs/tallrec --fuse [--abstain]
    python -m sasrecllm_jax.compare SASREC TALLREC HYBRID --fuse     # the hybrid against the fusion of its parts

Reads each run's scores.npz (every evaluated row's score, kept by every run) and applies DeLong's test
(metrics.paired_auc_test): the difference AUC(run) - AUC(base), its standard error, a 95% interval and
a two-sided p-value. Both runs face the same easy and hard rows, so the paired difference is known far
more precisely than either AUC's own error bar suggests: this is the test that can say whether one method
beats another. Runs must have scored the same rows (same dataset, same row cap). UAUC is paired over
users (metrics.paired_uauc_test: the mean of the per-user AUC differences, users as the independent
units, a Student t interval); a scores.npz older than its user column gives AUC only (`python -m sasrecllm_jax.score --run RUN
--write-run-scores` writes it again).

--fuse is the control a hybrid has to beat: the two runs' standardised scores mixed after training,
the weight picked on the validation split (late_fusion). If SASRec + TALLRec mixed this way does as well
as SASRecLLM, the fusion inside the LLM adds nothing a weighted sum does not.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from sasrecllm_jax.errors import ConfigError, run_command
from sasrecllm_jax.fusion import fit_late_fusion
from sasrecllm_jax.metrics import paired_auc_test, paired_mean_test, paired_uauc_test, warm_cold
from sasrecllm_jax.run_folder.environment import differences
from sasrecllm_jax.run_folder.scores import load_scores


def paired_scores(base: Path, run: Path, split: str,
                  loaded: tuple[dict, dict] | None = None) -> tuple[dict, dict]:
    """The two runs' scores of one split, checked to be of the same rows (`loaded`: their load_scores)."""
    a, b = loaded or (load_scores(base), load_scores(run))
    for name, s in ((base, a), (run, b)):
        if split not in s:
            raise ConfigError(f"{name}: no scores for split {split!r} (it has {sorted(s)})")
    a, b = a[split], b[split]
    if a["rows"] != b["rows"] or len(a["score"]) != len(b["score"]):
        raise ConfigError(f"{base} and {run} scored different rows of {split!r} ({len(a['score'])} rows, "
                          f"fingerprint {a['rows']}, against {len(b['score'])}, {b['rows']}): compare runs made on "
                          f"the same dataset with the same row cap (data.max_rows, data.cpu_max_rows on a CPU)")
    for field in ("user", "new_user", "new_item"):  # functions of the rows: one run's file may predate them
        value = a.get(field, b.get(field))
        if value is not None:
            a, b = {**a, field: value}, {**b, field: value}
    return a, b


def parts(rows: dict) -> dict[str, np.ndarray]:
    """The row masks of one split of load_scores: all, warm, cold, and new_user / new_item where stored."""
    out = warm_cold(rows["warm"])
    out.update({k: rows[k].astype(bool) for k in ("new_user", "new_item") if k in rows})
    return out


def paired_parts(rows: dict, scores_a: np.ndarray, scores_b: np.ndarray) -> dict[str, dict[str, dict]]:
    """{part: {"AUC": paired_auc_test, "UAUC": paired_uauc_test}} of two scorers on `rows` (one split of
    load_scores: label, warm, user, new_user, new_item) for each part (`parts`); UAUC only where the users
    are stored."""
    out = {}
    for part, m in parts(rows).items():
        y, a, b = rows["label"][m], scores_a[m], scores_b[m]
        out[part] = {"AUC": paired_auc_test(y, a, b)}
        if "user" in rows:
            out[part]["UAUC"] = paired_uauc_test(rows["user"][m], y, a, b)
    return out


def compare(base: Path, run: Path, split: str = "test") -> dict[str, dict[str, dict]]:
    """paired_parts of the base's and the run's scores on one split; on the test split also their ranking
    (HR@K, NDCG@K per positive) where both ranked the same candidates."""
    loaded = load_scores(base), load_scores(run)
    a, b = paired_scores(base, run, split, loaded)
    out = paired_parts(a, a["score"], b["score"])
    if split == "test":
        for part, tests in paired_ranking(a, *(s.get("test_ranking") for s in loaded)).items():
            out.setdefault(part, {}).update(tests)
    return out


def paired_ranking(test_rows: dict, ranked_a: dict | None, ranked_b: dict | None) -> dict[str, dict[str, dict]]:
    """{part: {"HR@K": paired_mean_test, "NDCG@K": ...}} at the largest cut-off K both kept, over the positives
    both runs ranked against the same candidates (same rows, negatives and seed); empty when either did
    not rank or they differ."""
    if ranked_a is None or ranked_b is None or ranked_a["rows"] != ranked_b["rows"]:
        return {}
    ks = [int(m[3:]) for m in ranked_a if m.startswith("hr@") and m in ranked_b]
    if not ks:
        return {}
    metrics = (f"hr@{max(ks)}", f"ndcg@{max(ks)}")
    return {part: {m.upper(): paired_mean_test(ranked_a[m][mask[ranked_a["row"]]], ranked_b[m][mask[ranked_a["row"]]])
                   for m in metrics} for part, mask in parts(test_rows).items()}


def valid_split(run: Path, scores: dict) -> str:
    """The split a run selected its checkpoints on (data.eval_split): the one in its scores besides test."""
    others = sorted(set(scores) - {"test", "test_ranking"})
    if len(others) != 1:
        raise ConfigError(f"{run}: scores.npz holds {others} besides test; name the validation split with --valid")
    return others[0]


def late_fusion(run_a: Path, run_b: Path, valid: str | None = None, grid: int = 21, abstain: bool = False,
                split_gate: bool = False, known_gate_zero: bool = False) -> dict:
    """The control for a hybrid: two runs' scores mixed after the fact, (1 - w) z_a + w z_b, each score
    standardised by its valid mean and deviation, w in [0, 1] picked by valid AUC (the first best of
    `grid` evenly spaced values). With `abstain`, a abstains on new-item rows: z_a there is one constant
    c picked on valid with w (sasrecllm_jax.fusion.ABSTAIN_GRID), so those rows rank by b alone and c places them against the
    rest (the control for a hybrid with model.mapper.unknown_id_score: learned); with `split_gate` too, b's
    weight on those rows is fitted apart (the control for model.mapper.llm_gates: known_unknown; w stands for
    the one-weight fit it starts from); with `known_gate_zero` too, b's weight on the other rows is held at 0
    (the control for llm_gates: unknown_only: a alone ranks the rows of known items). Returns w (and c), the
    valid AUC, and the fused test scores with the test AUCs of the fusion and of each run, and the paired
    tests fusion - a and fusion - b."""
    loaded = load_scores(run_a), load_scores(run_b)
    valid = valid or valid_split(run_a, loaded[0])
    va, vb = paired_scores(run_a, run_b, valid, loaded)
    ta, tb = paired_scores(run_a, run_b, "test", loaded)
    if split_gate and not abstain:
        raise ConfigError("--split-gate weighs the new-item rows apart, where BASE abstains: add --abstain")
    if known_gate_zero and not split_gate:
        raise ConfigError("--known-gate-zero holds the weight of a split gate on known items at 0: add --split-gate")
    if abstain and not all("new_item" in rows for rows in (va, ta)):
        raise ConfigError(f"{run_a}: its scores.npz has no new_item column to abstain on, and the dataset its "
                          f"config.yaml names is not here with those rows to read it from; prepare that dataset, or "
                          f"`python -m sasrecllm_jax.score --run RUN --write-run-scores` writes the file again")
    new = va["new_item"].astype(bool) if abstain else None
    # (a split gate starts from a fusion in which both runs count: w strictly between 0 and 1)
    f = fit_late_fusion(va["label"], va["score"], vb["score"], new, grid, gate_rows=new if split_gate else None,
                        weights=np.linspace(0.0, 1.0, grid)[1:-1] if split_gate else None, hold_gate=known_gate_zero)
    fused = f["fuse"](ta["score"], tb["score"], ta["new_item"].astype(bool) if abstain else None)
    return {**{k: v for k, v in f.items() if k != "fuse"}, "valid": valid, "test_scores": fused,
            "test": paired_parts(ta, ta["score"], fused), "test_vs_b": paired_parts(ta, tb["score"], fused)}


def format_rows(name: str, result: dict[str, dict[str, dict]]) -> list[str]:
    """Table rows; a test without two rows (or users) of each label prints dashes."""
    def row(part: str, metric: str, r: dict) -> str:
        if math.isnan(r["diff"]):
            return f"| {name} | {part} | {metric} | {r['n']} | - | - | - | - | - |"
        lo, hi = r["ci95"]
        return (f"| {name} | {part} | {metric} | {r['n']} | {r['auc_a']:.4f} | {r['auc_b']:.4f} | {r['diff']:+.4f} | "
                f"[{lo:+.4f}, {hi:+.4f}] | {r['p']:.3f} |")
    return [row(part, metric, r) for part, tests in result.items() for metric, r in tests.items()]


def header(base_name: str) -> list[str]:
    return [f"| run | rows | metric | n (rows; users for UAUC; positives for HR, NDCG) | {base_name} | run | "
            f"difference | 95% interval | p |",
            "|---|---|---|---|---|---|---|---|---|"]


def run_names(paths: list[Path]) -> list[str]:
    """Folder names, or paths below the common folder when two runs share a name (a/runs/x, b/runs/x)."""
    paths = [Path(p).absolute() for p in paths]
    if len({p.name for p in paths}) == len(paths):
        return [p.name for p in paths]
    common = Path(os.path.commonpath(paths))
    return [str(p.relative_to(common)) if p != common else p.name for p in paths]


def table(base: Path, runs: list[Path], split: str = "test") -> list[str]:
    """A markdown table: each run against the base, paired on every part."""
    base_name, *names = run_names([base, *runs])
    lines = header(base_name)
    for run, name in zip(runs, names):
        lines += format_rows(name, compare(base, run, split))
    return lines


def environment_warnings(base: Path, runs: list[Path]) -> list[str]:
    """A line per run whose recorded environment (library versions, backend, device, CPU) differs from the
    base's: their difference may be the machine's, not the method's."""
    env = lambda run: json.loads((run / "results.json").read_text()).get("environment") \
        if (run / "results.json").exists() else None
    base_name, *names = run_names([base, *runs])
    lines = []
    for run, name in zip(runs, names):
        diff = differences(env(base), env(run))
        if diff:
            said = ", ".join(f"{k} {a} vs {b}" for k, (a, b) in diff.items())
            lines.append(f"warning: {name} ran elsewhere than {base_name} ({said}); part of a difference may be "
                         f"the machine's")
    return lines


def fusion_lines(run_a: Path, run_b: Path, valid: str | None = None, abstain: bool = False,
                 against: list[Path] = (), split_gate: bool = False, known_gate_zero: bool = False) -> list[str]:
    """The late fusion of run_a and run_b tested against each of them, then each run of `against` (a hybrid
    made of the two, say) tested against the fusion, paired on the same test rows."""
    name_a, name_b, *names = run_names([run_a, run_b, *against])
    f = late_fusion(run_a, run_b, valid, abstain=abstain, split_gate=split_gate, known_gate_zero=known_gate_zero)
    if split_gate:
        first = (f"Late fusion of {name_a} and {name_b}: {name_a} + a x {name_b} with a = {f['gate_b']:.3g} on rows "
                 f"of known items and {f['gate_b_rows']:.3g} on new-item rows, where {name_a}'s score is "
                 f"{f['abstain_score']:.3g}, picked on {f['valid']} (AUC {f['valid_auc']:.4f}; a residual hybrid's "
                 f"llm_gate, llm_gate_unknown and unknown_score); test, paired:")
    else:
        picked = f"w = {f['weight_b']:.2f}" + (f" and c = {f['abstain_c']:+.2f}" if abstain else "")
        first = (f"Late fusion of {name_a} and {name_b}: (1 - w) z({name_a}) + w z({name_b}), {picked} "
                 f"picked on {f['valid']} (AUC {f['valid_auc']:.4f}); test, paired:")
    lines = [first, "", *header(name_a)]
    if abstain and not split_gate:
        lines.insert(1, f"({name_a} abstains on new-item rows: z({name_a}) is c there, so they rank by {name_b} alone)"
                     + (f"; the same ranking as {name_a} + a x {name_b} with a = {f['gate_b']:.3g} and {name_a}'s "
                        f"score {f['abstain_score']:.3g} on new-item rows: a residual hybrid's "
                        f"model.mapper.llm_gate_init and unknown_score_init to start near it (or "
                        f"model.mapper.fusion_start: late_fusion, which fits them in the run)"
                        if f["gate_b"] is not None else ""))
    elif not split_gate and f["gate_b"] is not None:
        lines.insert(1, f"(the same ranking as {name_a} + a x {name_b} with a = {f['gate_b']:.3g}: a residual "
                        f"hybrid's model.mapper.llm_gate_init to start near it, or model.mapper.fusion_start: "
                        f"late_fusion, which fits it in the run)")
    lines += format_rows("fusion", f["test"])
    lines += ["", *header(name_b)]
    lines += format_rows("fusion", f["test_vs_b"])
    if against:
        lines += ["", *header("fusion")]
        base = load_scores(run_a)
        for run, name in zip(against, names):
            rows, theirs = paired_scores(run_a, run, "test", (base, load_scores(run)))
            lines += format_rows(name, paired_parts(rows, f["test_scores"], theirs["score"]))
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sasrecllm_jax.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", type=Path, help="the run to compare against (e.g. results/ml1m/runs/sasrec)")
    p.add_argument("runs", type=Path, nargs="+", help="finished runs scored on the same rows")
    p.add_argument("--split", default="test")
    p.add_argument("--fuse", action="store_true", help="instead: mix the scores of BASE and the first RUN after "
                   "the fact (weight picked on --valid) and test the mixture against each; every further RUN (a "
                   "hybrid of the two) is tested against the mixture")
    p.add_argument("--valid", default=None, help="with --fuse: the split that picks the weight (default: the "
                   "runs' own validation split)")
    p.add_argument("--abstain", action="store_true", help="with --fuse: BASE abstains on new-item rows (one "
                   "constant, picked on --valid with the weight, stands for its score there)")
    p.add_argument("--split-gate", action="store_true", help="with --fuse --abstain: RUN's weight on new-item rows "
                   "is fitted apart from its weight on the others (which may go to 0)")
    p.add_argument("--known-gate-zero", action="store_true", help="with --split-gate: RUN's weight on rows of "
                   "known items is held at 0, so BASE alone ranks them (the control for model.mapper.llm_gates: "
                   "unknown_only)")
    args = p.parse_args(argv)

    def body():
        if args.fuse:
            print("\n".join(fusion_lines(args.base, args.runs[0], args.valid, args.abstain, args.runs[1:],
                                          args.split_gate, args.known_gate_zero)))
            return
        if args.abstain or args.split_gate or args.known_gate_zero:
            raise ConfigError("--abstain, --split-gate and --known-gate-zero are kinds of --fuse: add --fuse")
        lines = table(args.base, args.runs, args.split)
        for warning in environment_warnings(args.base, args.runs):
            print(warning, file=sys.stderr)
        base_name = run_names([args.base, *args.runs])[0]
        print(f"{args.split} split, paired tests (difference = run - {base_name}; AUC: DeLong's test over rows, "
              f"UAUC: over users):")
        print("\n".join(lines))

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
