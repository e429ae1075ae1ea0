"""The training command: `python train.py` (and the `sasrecllm-train` script)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sasrecllm_jax import compile_cache
from sasrecllm_jax.config import load_config
from sasrecllm_jax.errors import ConfigError, run_command
from sasrecllm_jax.train.run import RESULT_NEUTRAL_KEYS, train_and_evaluate
from sasrecllm_jax.train.strategies import phase_source

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def train_main(argv=None) -> int:
    """Parse the command line, train, and return the exit status. Called for the process's own command
    line (argv None), an interrupted run leaves through os._exit once its message is printed: the
    interpreter's shutdown would otherwise tear down JAX's and Orbax's threads under work in flight."""
    p = argparse.ArgumentParser(prog="train.py", description="Train and evaluate a recommender (SASRecLLM and baselines).")
    p.add_argument("--config", type=Path, default=None,
                   help="YAML config (default: with --resume, the run's own config.yaml in --workdir; otherwise "
                        "configs/quickstart.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.batch_size=32 (repeatable)")
    p.add_argument("--workdir", type=Path, default=None, help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --workdir (with the config it was made with)")
    p.add_argument("--restart", action="store_true", help="delete the run in --workdir (naming what goes) and start again")
    p.add_argument("--allow-config-change", action="store_true",
                   help=f"with --resume: accept changes to keys that cannot change the results ({', '.join(RESULT_NEUTRAL_KEYS)})")
    args = p.parse_args(argv)
    own = args.workdir / "config.yaml" if args.config is None and args.resume and args.workdir is not None else None
    if args.config is None:
        args.config = own if own is not None and own.exists() else DEFAULT_CONFIG
    workdir = args.workdir or Path("runs") / args.config.stem

    def body():
        if own is not None and not own.exists():
            raise ConfigError(f"--resume: {own} does not exist, so {workdir} holds no run to continue; check "
                              f"--workdir, or give the run's --config")
        if own is not None:
            print(f"resuming with {own}, the run's own config")
        cfg = load_config(args.config, args.overrides)
        compile_cache.enable()
        # the phases' checks run after loading: name the --set flags that shaped the phases beside the file
        train_and_evaluate(cfg, workdir, resume=args.resume, config_path=phase_source(args.config, args.overrides),
                           restart=args.restart,
                           allow_config_change=args.allow_config_change)

    code = run_command(body, graceful=True,
                       interrupted=f"stopped: interrupted. Checkpoints up to the last evaluation are in "
                                   f"{workdir}; add --resume to the same command to continue from there",
                       os_error_hint=lambda: (". The checkpoints saved before are kept: once fixed, add --resume to "
                                              "continue" if (workdir / "checkpoints").is_dir() else ""))
    if argv is None and code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
