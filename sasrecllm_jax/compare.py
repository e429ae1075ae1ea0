"""Is run B better than run A? A paired test of their AUCs on the same rows, for all, warm and cold rows.

    python -m sasrecllm_jax.compare results/ml1m/runs/sasrec results/ml1m/runs/sasrecllm_dual_stage
    python -m sasrecllm_jax.compare BASE RUN [RUN ...] --split valid_small

Reads each run's scores.npz (every evaluated row's score, kept by every run) and applies DeLong's test
(metrics.paired_auc_test): the difference AUC(run) - AUC(base), its standard error, a 95% interval and
a two-sided p-value. Both runs face the same easy and hard rows, so the paired difference is known far
more precisely than either AUC's own error bar suggests: this is the test that can say whether one method
beats another. Runs must have scored the same rows (same dataset, same row cap).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from sasrecllm_jax.config import ConfigError
from sasrecllm_jax.evaluate import load_scores
from sasrecllm_jax.metrics import paired_auc_test

PARTS = ("all", "warm", "cold")


def compare(base: Path, run: Path, split: str = "test") -> dict[str, dict]:
    """{part: paired_auc_test(labels, base scores, run scores)} for all, warm and cold rows."""
    a, b = load_scores(base), load_scores(run)
    for name, s in ((base, a), (run, b)):
        if split not in s:
            raise ConfigError(f"{name}: no scores for split {split!r} (it has {sorted(s)})")
    a, b = a[split], b[split]
    if a["rows"] != b["rows"] or len(a["score"]) != len(b["score"]):
        raise ConfigError(f"{base} and {run} scored different rows of {split!r} ({len(a['score'])} rows, "
                          f"fingerprint {a['rows']}, against {len(b['score'])}, {b['rows']}): compare runs made on "
                          f"the same dataset with the same row cap (data.max_rows, data.cpu_max_rows on a CPU)")
    warm = a["warm"].astype(bool)
    sel = {"all": np.ones_like(warm), "warm": warm, "cold": ~warm}
    return {part: paired_auc_test(a["label"][m], a["score"][m], b["score"][m]) for part, m in sel.items()}


def format_rows(name: str, result: dict[str, dict]) -> list[str]:
    f = lambda v: f"{v:+.4f}"
    return [f"| {name} | {part} | {r['n']} | {r['auc_a']:.4f} | {r['auc_b']:.4f} | {f(r['diff'])} | "
            f"[{f(r['ci95'][0])}, {f(r['ci95'][1])}] | {r['p']:.3f} |" for part, r in result.items()]


def header(base_name: str) -> list[str]:
    return [f"| run | rows | n | AUC {base_name} | AUC run | difference | 95% interval | p |",
            "|---|---|---|---|---|---|---|---|"]


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sasrecllm_jax.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", type=Path, help="the run to compare against (e.g. results/ml1m/runs/sasrec)")
    p.add_argument("runs", type=Path, nargs="+", help="finished runs scored on the same rows")
    p.add_argument("--split", default="test")
    args = p.parse_args(argv)
    from sasrecllm_jax.errors import KNOWN_ERRORS
    try:
        lines = table(args.base, args.runs, args.split)
    except KNOWN_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.split} split, DeLong's paired test (difference = AUC run - AUC {run_names([args.base, *args.runs])[0]}):")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
