"""Test-time ablations of a finished hybrid run: what does its score rely on? Nothing is retrained.

    python -m sasrecllm_jax.ablate results/ml1m/runs/sasrecllm_dual_stage      # drop and shuffle, test split
    python -m sasrecllm_jax.ablate RUN --modes drop --masks lora mapper sasrec --split valid_small

Inputs (--modes): `drop` zeroes the user and item soft tokens (and the ID score that model.mapper.fusion
gate or residual adds); `shuffle` gives every row another row's collaborative inputs; `on` evaluates
unchanged (it equals the run's results.json).
Parameters (--masks, by the partition's groups): `lora` puts every adapter back to its initial value
(B = 0: the base model); `mapper` zeroes the mapper's layers (the soft tokens become zero vectors; a fusion
gate, the unknown item's vector and ID score, and the item_seen flags keep their values); `sasrec` / `mf`
resets the encoder to its initialisation (the run's seed); `llm_term` zeroes a residual fusion's llm_gate(s), so
the score is the hybrid's ID score alone (with new_items: text, new items by their titles' vectors): what
the LLM adds.
For an ablation in training as well, train with --set train.collab=drop or train.freeze.

Writes RUN/ablation.json ({split: {mode or "mask:GROUP": metrics}}, merged with earlier calls; under
"vs_trained", {split: {name: {part: {"AUC": ..., "UAUC": ...}}}}: each ablation paired against the run as
trained on the same rows, difference = ablation - trained, as `python -m sasrecllm_jax.compare` tests) and
prints a table whose first row is the run as trained, then the paired differences.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

from sasrecllm_jax import compile_cache
from sasrecllm_jax.assembly import Assembly
from sasrecllm_jax.compare import paired_parts
from sasrecllm_jax.errors import ConfigError, run_command
from sasrecllm_jax.evaluate import evaluate
from sasrecllm_jax.experiments.markdown import paired_text
from sasrecllm_jax.models.mapper import FUSION_NUMBERS
from sasrecllm_jax.models.pop import COUNTS
from sasrecllm_jax.run_folder.files import ABLATION_FILE, PAIRED_KEY, paired_tests, read_ablations, write_whole
from sasrecllm_jax.run_folder.scores import SCORES_FILE, load_scores, rows_fingerprint
from sasrecllm_jax.score import Recommender
from sasrecllm_jax.train import groups
from sasrecllm_jax.train.item_text_start import with_table
from sasrecllm_jax.train.progress import row_bar

MODES = ("on", "drop", "shuffle")
MASKS = ("lora", "mapper", "sasrec", "mf", "llm_term")
NO_INITIAL = ("mapper", "llm_term")  # masks that need no initial params
# the mapper group's leaves that the mapper mask keeps: the fusion's weights, the unknown item's vector
# (an input of the ID score too) and its ID score; the counted item_seen flags are group counts
KEPT_BY_MAPPER_MASK = (*FUSION_NUMBERS, "unknown_item")


def masked(params: dict, group: str, initial: dict) -> dict:
    """params with one group ablated: lora and the encoders back to their initial values (with
    new_items: text the items' title vectors, fitted to the trained encoder, zeroed), the mapper's
    layers zeroed, llm_term the residual's llm_gate (and llm_gate_unknown) zeroed."""
    if group == "llm_term":
        if not {"llm_gate", "llm_gate_unknown"} & set(params.get("mapper", {})):
            raise ConfigError("--masks llm_term zeroes the LLM term of a residual fusion (mapper/llm_gate), and this run "
                              "has none (model.mapper.fusion is not residual): its score is the LLM's alone; mask "
                              "lora or mapper, or drop its collaborative inputs (--modes drop)")
        gates = {k: jnp.zeros_like(v) for k, v in params["mapper"].items() if k in ("llm_gate", "llm_gate_unknown")}
        return {**params, "mapper": {**params["mapper"], **gates}}
    if group not in groups.present_groups(params):
        raise ConfigError(f"--masks {group}: this run has no {group!r} parameters (it has "
                          f"{sorted(groups.present_groups(params) - {'frozen', 'counts'})})")
    if group == "mapper":
        zeroed = {k: (v if k in KEPT_BY_MAPPER_MASK or k == COUNTS else jax.tree_util.tree_map(jnp.zeros_like, v))
                  for k, v in params["mapper"].items()}
        return {**params, "mapper": zeroed}
    start, _ = groups.split(initial, [group])
    out = groups.replace_groups(params, {group: start})
    if group in groups.ENCODERS and "item_text" in params.get("mapper", {}).get(COUNTS, {}):
        # new items' title vectors were fitted to the trained encoder: they go with it
        out = with_table(out, jnp.zeros_like(params["mapper"][COUNTS]["item_text"]))
    return out


def trained_scores(run: Path, split: str, data) -> dict | None:
    """The run's own scores of `split` (RUN/scores.npz) if they are of the rows `data` holds; else None."""
    if not (run / SCORES_FILE).exists():
        return None
    scores = load_scores(run).get(split)
    return scores if scores is not None and scores["rows"] == rows_fingerprint(data) else None


def ablate(run: str | Path, modes=("drop", "shuffle"), split: str = "test", masks=()) -> dict:
    run = Path(run)
    bad = [m for m in modes if m not in MODES] + [m for m in masks if m not in MASKS]
    if bad:
        raise ConfigError(f"unknown ablation mode(s) {bad}; choose --modes from {list(MODES)} and --masks from "
                          f"{list(MASKS)}")
    rec = Recommender(run)
    if rec.prompt != "hybrid":
        raise ConfigError(f"{run}: a {rec.cfg.train.method} run has no collaborative tokens to ablate "
                          f"(its prompts are {rec.prompt!r}); ablate a hybrid run (sasrecllm, collm_mf)")
    if split not in rec.assembly.dataset.splits:
        raise ConfigError(f"split {split!r} is not in the dataset; choose from {sorted(rec.assembly.dataset.splits)}")
    cfg = rec.cfg
    data = rec.assembly.split(split, "hybrid", rec.assembly.row_limit("eval"))
    # the run's own initial params (its seed), for the masks that put a group back to them
    initial = Assembly.for_run(cfg, dataset=rec.assembly.dataset)[1] if set(masks) - set(NO_INITIAL) else None
    out_path = run / ABLATION_FILE
    out = read_ablations(run)
    trained = trained_scores(run, split, data)
    jobs = [(mode, mode, rec.params) for mode in modes]
    jobs += [(f"mask:{g}", "on", masked(rec.params, g, initial and groups.select(initial, set(rec.params)))) for g in masks]
    for name, mode, params in jobs:
        with row_bar(len(data), f"{split}, {name}") as bar:
            metrics, scores = evaluate(rec.scorer, params, data, cfg, "hybrid", mode, progress=bar)
        out.setdefault(split, {})[name] = metrics
        # None where the run's own scores are of other rows: an older paired test must not stay beside new metrics
        out.setdefault(PAIRED_KEY, {}).setdefault(split, {})[name] = None if trained is None else \
            without_nan(paired_parts(trained, trained["score"], scores))
        write_whole(out_path, json.dumps(out, indent=2))  # a grid's summary may be reading it
    return out


def as_trained(run: Path, split: str, ablations: dict) -> dict | None:
    """The run's own metrics on `split` (results.json's test or valid; else an `on` evaluation)."""
    if "on" in ablations:
        return ablations["on"]
    results = json.loads((run / "results.json").read_text()) if (run / "results.json").exists() else {}
    key = "test" if split == "test" else "valid" if split == results.get("config", {}).get("data", {}).get(
        "eval_split") else None
    return results.get(key) if key else None


def without_nan(tree):
    """A JSON-safe copy: NaN (a test without two rows of each label) becomes None, as in results.json."""
    if isinstance(tree, dict):
        return {k: without_nan(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [without_nan(v) for v in tree]
    return None if isinstance(tree, float) and math.isnan(tree) else tree


def paired_lines(vs_trained: dict, names: list[str]) -> list[str]:
    """The AUC differences ablation - trained with their 95% intervals, a line per ablation."""
    lines = ["AUC difference to the run as trained, paired on the same rows (DeLong, 95% interval):"]
    for name in names:
        tests = vs_trained.get(name)
        lines.append(f"  {name}: " + ("; ".join(f"{part.replace('_', ' ')} {paired_text(t['AUC'])}"
                                                for part, t in tests.items()) if tests else
                                      "- (the run's scores.npz does not hold these rows)"))
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sasrecllm_jax.ablate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a finished run folder of a hybrid method")
    p.add_argument("--modes", nargs="*", default=["drop", "shuffle"], help=f"from {list(MODES)}")
    p.add_argument("--masks", nargs="*", default=[], help=f"groups to ablate by mask, from {list(MASKS)}")
    p.add_argument("--split", default="test")
    args = p.parse_args(argv)

    def body():
        compile_cache.enable()
        ablations = ablate(args.run, args.modes, args.split, args.masks)
        out = ablations[args.split]
        rows = {"as trained": as_trained(args.run, args.split, out),
                **{k: v for k, v in out.items() if k != "on" and (k in args.modes or k[5:] in args.masks)}}
        fmt = lambda v: f"{v:8.4f}" if v is not None else f"{'-':>8}"
        print(f"{'ablation':<14}{'AUC':>8}{'UAUC':>8}{'warm':>8}{'cold':>8}{'new item':>9}{'n':>7}")
        for name, m in rows.items():
            if m is None:
                continue
            print(f"{name:<14}{fmt(m['all']['auc'])}{fmt(m['all']['uauc'])}{fmt(m['warm']['auc'])}"
                  f"{fmt(m['cold']['auc'])}{fmt(m.get('new_item', {}).get('auc')):>9}{m['all']['n']:>7}")
        print("\n".join(paired_lines(paired_tests(ablations, args.split), list(rows)[1:])))

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
