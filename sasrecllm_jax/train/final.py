"""A run's last step: the final model on the validation and test splits, RUN/scores.npz, RUN/results.json,
and the table it prints."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import jax

from sasrecllm_jax.assembly import Assembly
from sasrecllm_jax.config import Config, to_dict
from sasrecllm_jax.evaluate import Scorer, evaluate
from sasrecllm_jax.metrics import PARTS, paired_auc_test
from sasrecllm_jax.models.mapper import FUSION_NUMBERS
from sasrecllm_jax.ranking_eval import rank_split, ranked_arrays, ranking_report, skip_reason
from sasrecllm_jax.run_folder.environment import environment
from sasrecllm_jax.run_folder.files import code_version, write_whole
from sasrecllm_jax.run_folder.metrics_log import Reporter
from sasrecllm_jax.run_folder.scores import SCORES_FILE, save_scores
from sasrecllm_jax.train import groups
from sasrecllm_jax.train.phase import PhaseResult
from sasrecllm_jax.train.progress import row_bar


def final_evaluation(cfg: Config, assembly: Assembly, scorer: Scorer, params: dict, prompt: str, workdir: Path,
                     reporter: Reporter, *, phases: list[str], train_time: float, timing: dict,
                     reused: dict[str, str], handed_on: PhaseResult | None) -> dict:
    """Evaluate the final params on the validation split (unless the last phase already did, on these very
    params) and on the test split; write scores.npz and results.json; print the test table."""
    d, t = cfg.data, cfg.train
    params = groups.select(params, groups.prompt_modules(prompt, cfg.model.encoder))
    out, row_scores = {}, {}  # {split: metrics}, {split: (rows, their scores)}
    if handed_on is not None and handed_on.handed_on_valid is not None and handed_on.handed_on_scores is not None:
        # the final params are the last phase's best: already evaluated
        out[d.eval_split] = handed_on.handed_on_valid
        row_scores[d.eval_split] = (assembly.split(d.eval_split, prompt, assembly.row_limit("eval")),
                                    handed_on.handed_on_scores)
    timing = dict(timing)
    for split in [s for s in (d.eval_split, "test") if s not in out]:
        data = assembly.split(split, prompt, assembly.row_limit("eval"))
        t0, compiled = time.perf_counter(), scorer.compile.seconds
        with row_bar(len(data), f"evaluate {split}") as bar:
            out[split], scores = evaluate(scorer, params, data, cfg, prompt, progress=bar)
        row_scores[split] = (data, scores)
        timing[f"evaluate {split}"] = {"rows": len(data), "wall_s": round(time.perf_counter() - t0, 2),
                                       "compile_s": round(scorer.compile.seconds - compiled, 2)}
        reporter.log("final", split, 0, out[split])
    alone = encoder_alone(cfg, assembly, params, prompt, *row_scores["test"])
    ranking, ranking_rows = test_ranking(cfg, assembly, scorer, params, prompt, row_scores["test"][0], timing)
    # every row's score, for paired comparisons between runs (python -m sasrecllm_jax.compare)
    save_scores(workdir / SCORES_FILE, row_scores, ranking_rows)
    results = {"method": t.method, "strategy": t.strategy if t.method == "sasrecllm" else None,
               "config": json.loads(json.dumps(to_dict(cfg))), "phases": phases,
               "valid": out[d.eval_split], "test": out["test"], "ranking": ranking,
               **({"encoder_alone": alone} if alone else {}),
               "train_time_s": round(train_time, 1),  # reused phases count at what they cost their run
               "reused_phases": reused,
               "timing": timing,
               # the fusion's learned weight (model.mapper.fusion): on the ID model's score (gate:
               # id_gate) or on the LLM's (residual: llm_gate), how much of the final score is whose; the ID
               # score of rows whose item is unknown (unknown_id_score: learned: unknown_score)
               **{g: float(params["mapper"][g]) for g in FUSION_NUMBERS if g in params.get("mapper", {})},
               "device": jax.devices()[0].device_kind, "environment": environment(),
               "dataset": assembly.dataset.card.get("source"),
               "commit": code_version(), "date": time.strftime("%Y-%m-%d")}
    write_whole(workdir / "results.json", json.dumps(results, indent=2))
    print(format_table(results))
    print(next_steps(workdir, assembly, prompt))
    return results


def encoder_alone(cfg: Config, assembly: Assembly, params: dict, prompt: str, data, scores) -> dict | None:
    """For a run that scores with hybrid prompts: its own ID encoder alone on the same test rows, and the
    paired difference (hybrid - encoder; DeLong) on all rows: what the LLM added."""
    if prompt != "hybrid":
        return None
    encoder = cfg.model.encoder
    scorer = Scorer(assembly.model("none", deterministic=True))
    rows = assembly.split("test", "none", assembly.row_limit("eval"))
    result, own = evaluate(scorer, groups.select(params, {encoder}), rows, cfg, "none")
    test = paired_auc_test(data.label, own, scores)
    return {"encoder": encoder, "test": result,
            "paired_all": {k: test[k] for k in ("diff", "ci95", "p")} if test["diff"] == test["diff"] else None}


def next_steps(workdir: Path, assembly: Assembly, prompt: str) -> str:
    """The commands a user runs next on a finished run (the run folder as given relative to the working
    directory when it lies under it: runs/quickstart, as the user would type it)."""
    try:
        workdir = Path(workdir).resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        pass
    iids = list(assembly.dataset.splits["test"]["his"].iloc[0][-3:]) or [1]
    own = assembly.dataset.item_ids()  # a dataset that keeps its source's ids is asked in them,
    if own is not None and any(re.search(r"[\s,\"']", str(own[i])) for i in iids):
        own = None  # unless they hold what a command line splits on
    history = " ".join(str(own[i]) for i in iids) if own is not None else " ".join(str(i) for i in iids)
    ask = f"--own-ids --history \"{history}\"" if own is not None else f"--history \"{history}\""
    lines = ["next:", f"  python -m sasrecllm_jax.report {workdir} --out {workdir}/curves.png     # training curves"]
    if prompt != "text":
        lines.append(f"  python -m sasrecllm_jax.recommend --run {workdir} {ask}   # top 10, titled")
    lines.append(f"  tensorboard --logdir {workdir}/tensorboard    # the same curves, live (pip install tensorboard)")
    return "\n".join(lines)


def test_ranking(cfg: Config, assembly: Assembly, scorer: Scorer, params: dict, prompt: str, data, timing: dict):
    """results.json's `ranking` (HR@K and NDCG@K per part, or why the run does not rank) and the per-positive
    arrays scores.npz keeps for paired comparisons."""
    reason = skip_reason(cfg, prompt)
    if reason is not None:
        return {"skipped": reason}, {}
    t0, compiled = time.perf_counter(), scorer.compile.seconds
    ranked = rank_split(assembly, scorer, params, data, prompt)
    timing["rank test"] = {"positives": len(ranked.rows), "wall_s": round(time.perf_counter() - t0, 2),
                           "compile_s": round(scorer.compile.seconds - compiled, 2)}
    e = cfg.eval
    summary = {"negatives": e.ranking_negatives, "seed": e.ranking_seed, "ks": list(e.ranking_ks),
               "skipped_positives": ranked.skipped, "test": ranking_report(ranked, e.ranking_ks)}
    return summary, ranked_arrays(ranked, data, e)


def format_table(results: dict) -> str:
    name = results["method"] + (f" ({results['strategy']})" if results.get("strategy") else "")
    lines = [f"{name}: test split ({results['train_time_s']} s, {results['device']})",
             f"{'rows':<9}{'AUC':>8}{'UAUC':>8}{'logloss':>9}{'n':>8}"]
    fmt = lambda v: f"{v:8.4f}" if v is not None else f"{'-':>8}"
    for part in [p for p in PARTS if p in results["test"]]:
        r = results["test"][part]
        lines.append(f"{part.replace('_', ' '):<9}{fmt(r['auc'])}{fmt(r['uauc'])}{fmt(r['logloss'])[-9:]:>9}"
                     f"{r['n']:>8}")
    ranking = results.get("ranking") or {}
    if "test" in ranking:
        k = max(ranking["ks"])
        lines.append(f"ranking: each test positive against {ranking['negatives']} sampled items its user never "
                     f"interacted with")
        lines.append(f"{'rows':<9}{f'HR@{k}':>8}{f'NDCG@{k}':>9}{'n':>8}")
        for part in [p for p in PARTS if p in ranking["test"]]:
            r = ranking["test"][part]
            lines.append(f"{part.replace('_', ' '):<9}{fmt(r[f'hr@{k}'])}{fmt(r[f'ndcg@{k}'])[-9:]:>9}{r['n']:>8}")
    elif "skipped" in ranking:
        lines.append(f"ranking skipped: {ranking['skipped']}")
    alone = results.get("encoder_alone")
    if alone:
        a, test = alone["test"]["all"], alone["paired_all"]
        said = (f"; the hybrid's difference {test['diff']:+.4f} [{test['ci95'][0]:+.4f}, {test['ci95'][1]:+.4f}]"
                if test else "")
        lines.append(f"{alone['encoder']} alone on the same rows: AUC {fmt(a['auc']).strip()}, UAUC "
                     f"{fmt(a['uauc']).strip()}{said}")
    return "\n".join(lines)
