"""The training command: `python train.py` (and the `sasrecllm-train` script)."""
from __future__ import annotations

import argparse
from pathlib import Path

from sasrecllm_jax.config import load_config
from sasrecllm_jax.errors import run_command
from sasrecllm_jax.train.run import train_and_evaluate

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def train_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="train.py", description="Train and evaluate a recommender (SASRecLLM and baselines).")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="YAML config (default: configs/quickstart.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.batch_size=32 (repeatable)")
    p.add_argument("--workdir", type=Path, default=None, help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --workdir")
    args = p.parse_args(argv)
    workdir = args.workdir or Path("runs") / args.config.stem

    def body():
        cfg = load_config(args.config, args.overrides)
        train_and_evaluate(cfg, workdir, resume=args.resume, config_path=str(args.config))

    return run_command(body, interrupted=f"stopped: interrupted. Checkpoints up to the last evaluation are in "
                                         f"{workdir}; add --resume to the same command to continue from there")
