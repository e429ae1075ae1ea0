"""The paper's claims, read on the SASRecLLM configuration best on valid AUC (over its seeds), each with its
paired interval; a control of ours (the hybrid against the late fusion of its own encoder's and TALLRec's
scores); and notes that keep a reader from misreading them."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from sasrecllm_jax.compare import compare, late_fusion, load_scores, paired_parts, paired_scores, parts, valid_split
from sasrecllm_jax.config import SASRecConfig
from sasrecllm_jax.errors import ConfigError
from sasrecllm_jax.metrics import paired_auc_means_test
from sasrecllm_jax.experiments.markdown import interval, num, signed, table
from sasrecllm_jax.experiments.seeds import mean_and_sd, mean_sd, seed_group_of
from sasrecllm_jax.run_folder.files import paired_ablation

CLAIMS = [  # (claim, baseline run, rows, relation): the paper's claims against its baselines
    ("AUC > SASRec", "sasrec", "all", ">"), ("warm AUC >= SASRec", "sasrec", "warm", ">="),
    ("cold AUC > SASRec", "sasrec", "cold", ">"), ("new-item AUC > SASRec", "sasrec", "new_item", ">"),
    ("AUC > TALLRec", "tallrec", "all", ">"), ("cold AUC > TALLRec", "tallrec", "cold", ">"),
    ("new-item AUC > TALLRec", "tallrec", "new_item", ">")]
NO_LOSS = 0.005  # a ">=" claim (no loss) is shown when the paired interval's lower bound is above -NO_LOSS


def verdict(test: dict | None, rel: str) -> str:
    """Whether the paired 95% interval shows a claim: "shown" only when it lies on the claimed side (for
    ">", above zero; for ">=", above -NO_LOSS), "contradicted" when it lies on the other side of zero,
    else "not shown"."""
    if test is None or math.isnan(test["diff"]):
        return "no paired test"
    lo, hi = test["ci95"]
    if lo > (0.0 if rel == ">" else -NO_LOSS):
        return "shown"
    return "contradicted" if hi < 0 else "not shown"


def chosen_hybrid(summary: dict) -> tuple[str, float, int, int] | None:
    """(run, valid AUC, seeds, configurations): the SASRecLLM configuration best on valid AUC, averaged over
    its seeds where several ran (one seed's valid AUC can lead by the seed's luck), among the configurations
    with a run of the baselines' seed (sasrec's) where any has one, and of it that run (else its best on
    valid), so that the claims pair runs of one seed. Only configurations evaluated on as many valid rows as
    sasrec's compete (a run of other row caps scored other rows)."""
    hybrids = {n: r for n, r in summary.items() if r.get("method") == "sasrecllm" and r["valid"]["all"]["auc"] is not None}
    rows = summary.get("sasrec", {}).get("valid", {}).get("all", {}).get("n")
    if rows is not None:  # valid AUCs rank configurations only on the same rows: sasrec's (the baselines')
        hybrids = {n: r for n, r in hybrids.items() if r["valid"]["all"].get("n") == rows}
    if not hybrids:
        return None
    group_of = seed_group_of(summary)
    valid = lambda n: hybrids[n]["valid"]["all"]["auc"]
    configs = {tuple(m for m in group_of.get(n, [n]) if m in hybrids) for n in hybrids}
    mean_valid = {names: sum(map(valid, names)) / len(names) for names in configs}
    seed = summary.get("sasrec", {}).get("config", {}).get("train", {}).get("seed")
    of_seed = [c for c in configs if any(summary[n]["config"]["train"]["seed"] == seed for n in c)]
    names = max(sorted(of_seed or configs), key=lambda c: mean_valid[c])
    same = [n for n in names if summary[n]["config"]["train"]["seed"] == seed]
    return (same[0] if same else max(names, key=valid)), mean_valid[names], len(names), len(configs)


def claims_section(out: Path, summary: dict) -> list[str]:
    """The paper's claims read on the SASRecLLM configuration that is best on valid AUC (the selection a
    researcher may make without looking at test; chosen_hybrid), each against its baseline: the test AUCs,
    and where both runs kept their scores the paired difference's 95% interval and where it lies (above
    zero: the run is better beyond the test rows' noise; covers: not resolved; below: worse). The interval
    is over test rows: it does not know how much a reseed moves a method (seed_claims does, where several
    seeds ran)."""
    chosen = chosen_hybrid(summary)
    if chosen is None or not {"sasrec", "tallrec"} <= set(summary):
        return []
    best, best_valid, seeds, configurations = chosen
    paired = {}
    for base in ("sasrec", "tallrec"):
        try:
            paired[base] = compare(out / "runs" / base, out / "runs" / best)
        except ConfigError:  # no scores.npz (an older run), or scored on other rows
            paired[base] = None
    rows = []
    for claim, base, part, rel in CLAIMS:
        if part not in summary[base]["test"] or part not in summary[best]["test"]:
            continue  # runs from before per-cause parts
        a, b = summary[base]["test"][part]["auc"], summary[best]["test"][part]["auc"]
        if a is None or b is None:
            rows.append([claim, "-", "-", "-", "-", "-", "-"])
            continue
        if summary[base]["test"][part]["n"] != summary[best]["test"][part]["n"]:  # e.g. CPU runs of other caps
            rows.append([claim, num(b), num(a), "-", "-", "-", f"not comparable: {summary[best]['test'][part]['n']}"
                         f" vs {summary[base]['test'][part]['n']} test rows"])
            continue
        test = paired[base][part]["AUC"] if paired[base] else None
        interval, side = interval_vs_zero(test)
        rows.append([claim, num(b), num(a), signed(b - a), interval, side, verdict(test, rel)])
    rows += fusion_control(out, summary, best) + ablation_control(out / "runs" / best)
    over = f", the mean of its {seeds} seeds" if seeds > 1 else ""
    lines = ["", f"The paper's claims, on the SASRecLLM configuration best on valid AUC: {best} (valid AUC "
                 f"{best_valid:.4f}{over}; best of {configurations}); test split. A claim is "
                 f"shown only when its paired 95% interval lies on the claimed side (for no loss, above "
                 f"-{NO_LOSS}):", "",
             *table(["claim", best, "baseline", "difference", "paired 95% interval", "interval vs zero", "verdict"],
                    rows)]
    return lines + seed_claims(out, summary, best) + kept_start_note(best, summary[best]) + own_encoder_note(summary, best)


def interval_vs_zero(test: dict | None) -> tuple[str, str]:
    """A paired test's 95% interval and where it lies: above zero, below, or covering it ("-" without a test,
    or with too few rows of a label)."""
    if test is None or math.isnan(test["diff"]):
        return "-", "-"
    lo, hi = test["ci95"]
    return interval(lo, hi), "above" if lo > 0 else ("below" if hi < 0 else "covers")


def fusion_control(out: Path, summary: dict, best: str) -> list[list[str]]:
    """Claims rows that are ours, not the paper's: the hybrid against the late fusion of its own encoder's
    and TALLRec's scores (compare.late_fusion, the weight picked on valid). Both signals reach the hybrid;
    if a weighted sum after training does as well, the fusion inside the LLM adds nothing. Where the
    validation rows hold new items, also the fusion in which the encoder abstains on them (compare --fuse
    --abstain), and for a hybrid with two LLM gates the fusion with two weights (--split-gate): the
    simplest sums that do what the hybrid does there."""
    own = own_encoder_runs(summary, best)
    if not own or "tallrec" not in summary:
        return []
    encoder = "sasrec" if "sasrec" in own else own[0]
    runs = out / "runs"
    try:
        rows, mine = paired_scores(runs / encoder, runs / best, "test")
        valid = load_scores(runs / encoder)
        valid = valid[valid_split(runs / encoder, valid)]
    except ConfigError:  # no scores.npz, or scored on other rows
        return []
    kinds = [("late fusion", {})]
    if "new_item" in valid and valid["new_item"].any():
        kinds.append(("late fusion abstaining on new items", {"abstain": True}))
        gates = summary[best]["config"]["model"].get("mapper", {}).get("llm_gates")
        if gates == "known_unknown":
            kinds.append(("two-weight late fusion abstaining on new items", {"abstain": True, "split_gate": True}))
        if gates == "unknown_only":
            kinds.append(("late fusion abstaining on new items, the LLM on new items only",
                          {"abstain": True, "split_gate": True, "known_gate_zero": True}))
    out_rows = []
    for name, kw in kinds:
        try:
            fused = late_fusion(runs / encoder, runs / "tallrec", **kw)
        except ConfigError:  # no scores.npz, scored on other rows, or no new_item column
            continue
        test = paired_parts(rows, fused["test_scores"], mine["score"])["all"]["AUC"]
        if math.isnan(test["diff"]):
            continue
        span, side = interval_vs_zero(test)
        a, b = test["auc_a"], test["auc_b"]
        out_rows.append([f"control: AUC > {name} of {encoder} + tallrec (w = {fused['weight_b']:.2f} on {fused['valid']})",
                         num(b), num(a), signed(b - a), span, side, verdict(test, ">")])
    return out_rows


# the ablations the claims read as controls: (name in ablation.json, what the hybrid is without it)
CONTROLS = (("drop", "its collaborative inputs dropped (ablate --modes drop)"),
            ("mask:llm_term", "its ID score alone (ablate --masks llm_term)"))


def ablation_control(run: Path) -> list[list[str]]:
    """Claims rows that are ours: the hybrid against itself with its collaborative inputs dropped, and
    against its ID score alone (the drop and llm_term ablations of RUN/ablation.json, paired on the same
    test rows), on all rows and on new-item rows. If dropping one side costs nothing, it adds nothing to
    the other."""
    rows = []
    for name, without in CONTROLS:
        vs = paired_ablation(run, "test", name)
        for part, claim in (("all", "AUC"), ("new_item", "new-item AUC")):
            t = (vs or {}).get(part, {}).get("AUC")
            if t is None or t["diff"] is None:  # none stored, or too few rows of a label
                continue
            # stored as ablation - trained; the claim reads trained - ablation
            test = {**t, "diff": 0.0 - t["diff"], "ci95": [0.0 - t["ci95"][1], 0.0 - t["ci95"][0]]}  # 0.0 -: no -0
            span, side = interval_vs_zero(test)
            rows.append([f"control: {claim} > {without}", num(t["auc_a"]), num(t["auc_b"]), signed(test["diff"]),
                         span, side, verdict(test, ">")])
    return rows


def seed_scores(out: Path, names_a: list[str], names_b: list[str]) -> tuple | None:
    """(the test labels, their parts, the scores of names_a's runs, of names_b's) on the same test rows, or
    None where a run kept no scores or the runs scored other rows."""
    runs = out / "runs"
    try:
        scored = [paired_scores(runs / names_a[0], runs / n, "test") for n in names_a + names_b]
    except ConfigError:
        return None
    rows, scores = scored[0][0], [b["score"] for _, b in scored]
    return rows["label"], parts(rows), scores[:len(names_a)], scores[len(names_a):]


def seed_means_test(scored: tuple | None, part: str) -> dict | None:
    """paired_auc_means_test of seed_scores on one part of the rows (None without scores or that part)."""
    if scored is None or part not in scored[1]:
        return None
    label, masks, a, b = scored
    m = masks[part]
    return paired_auc_means_test(label[m], [s[m] for s in a], [s[m] for s in b])


def seed_claims(out: Path, summary: dict, best: str) -> list[str]:
    """The claims again on means over seeds, where the chosen hybrid's method and the baseline each ran
    with two or more: one seed's lead can be the seed's. The interval is DeLong's over every seed's scores
    of the same test rows (paired_auc_means_test): the test rows' noise in the difference of the means,
    not the spread a further seed would add."""
    group_of = seed_group_of(summary)
    if best not in group_of:
        return []
    rows, loaded = [], {}
    for claim, base, part, rel in CLAIMS:
        if base not in group_of or part not in summary[base]["test"] or part not in summary[best]["test"] \
                or summary[base]["test"][part]["n"] != summary[best]["test"][part]["n"]:
            continue
        mine, theirs = ([summary[n]["test"][part]["auc"] for n in group_of[name]] for name in (best, base))
        (b, _), (a, _) = mean_and_sd(mine), mean_and_sd(theirs)
        if a is None or b is None:
            continue
        if base not in loaded:  # each baseline's scores read once for its claims
            loaded[base] = seed_scores(out, group_of[base], group_of[best])
        test = seed_means_test(loaded[base], part)
        span, side = interval_vs_zero(test)
        rows.append([claim, f"{mean_sd(mine)} ({len(mine)})", f"{mean_sd(theirs)} ({len(theirs)})", signed(b - a),
                     span, side, verdict(test, rel)])
    if not rows:
        return []
    return ["", f"The same claims on means over seeds (mean +- sd (seeds)), {best}'s method against each baseline's; "
                "the paired 95% interval is DeLong's over every seed's scores of the same test rows (the rows' "
                "noise in the difference of the means, not the spread a further seed would add):",
            "", *table(["claim", "hybrid", "baseline", "difference of means", "paired 95% interval",
                        "interval vs zero", "verdict"], rows)]


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
