"""python -m sasrecllm_jax.report RUN_DIR [RUN_DIR ...] --out curves.png

Training curves per phase and test AUC by part of the test rows, for one or more runs (plots/curves.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sasrecllm_jax.plots.curves import plot_runs


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
