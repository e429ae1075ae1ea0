"""Command-line entry points."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def train_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="train.py", description="Train and evaluate a recommender (SASRecLLM and baselines).")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="YAML config (default: configs/quickstart.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.batch_size=32 (repeatable)")
    p.add_argument("--workdir", type=Path, default=None, help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --workdir")
    args = p.parse_args(argv)
    from sasrecllm_jax.errors import KNOWN_ERRORS
    from sasrecllm_jax.config import load_config
    workdir = args.workdir or Path("runs") / args.config.stem
    try:
        cfg = load_config(args.config, args.overrides)
        from sasrecllm_jax.train.loop import train_and_evaluate
        train_and_evaluate(cfg, workdir, resume=args.resume, config_path=str(args.config))
    except KNOWN_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C, or a deadline's SIGINT (`timeout -s INT`)
        print(f"stopped: interrupted. Checkpoints up to the last evaluation are in {workdir}; add --resume "
              "to the same command to continue from there", file=sys.stderr)
        return 130
    return 0
