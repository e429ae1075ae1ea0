"""python -m sasrecllm_jax.experiments DATASET [--methods ...] [--seeds ...] [--out DIR] [--ablate]

    python -m sasrecllm_jax.experiments ml1m                       # every method, seed 0
    python -m sasrecllm_jax.experiments ml1m --methods sasrec tallrec --seeds 0 1
    python -m sasrecllm_jax.experiments ml1m --summary-only        # rebuild the table from finished runs
    python -m sasrecllm_jax.experiments ml1m --methods sasrecllm_dual_stage --set model.mapper.hidden=64 --tag mapper64
    python -m sasrecllm_jax.experiments ml1m --methods sasrecllm_dual_stage --ablate   # + test-time ablations

Runs each method with configs/experiments/DATASET/METHOD.yaml into OUT/runs/ (default OUT:
results/DATASET), then writes OUT/summary.json, SUMMARY.md, warm_cold.png and curves.png. On a CPU the
configs' data.cpu_max_rows apply (a documented subset), and the table says so.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sasrecllm_jax import compile_cache
from sasrecllm_jax.errors import ConfigError, run_command
from sasrecllm_jax.experiments.grid import METHODS, ROOT, config_path, run_grid
from sasrecllm_jax.experiments.summary import summarise


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

    def body():
        unknown = [m for m in args.methods if not config_path(args.dataset, m).exists()]
        if unknown:
            raise ConfigError(f"no config for {unknown} in configs/experiments/{args.dataset}/")
        if not args.summary_only:
            compile_cache.enable()
            run_grid(args.dataset, args.methods, args.seeds, out, args.overrides, args.tag, args.ablate,
                     not args.no_phase_cache)
        if not args.no_summary:
            summarise(out)

    return run_command(body, interrupted=f"stopped: interrupted. Finished runs are kept under {out / 'runs'}; the "
                                         "same command skips them, resumes a cut run from its last evaluation and "
                                         "redoes missing ablations")


if __name__ == "__main__":
    sys.exit(main())
