"""Test-time ablations of a finished hybrid run: how much of its score comes from the collaborative tokens?

    python -m sasrecllm_jax.ablate results/ml1m/runs/sasrecllm_dual_stage            # drop and shuffle, test split
    python -m sasrecllm_jax.ablate RUN --modes on drop --split valid_small

`drop` zeroes the user and item soft tokens (and the ID score that model.mapper.fusion gate or residual adds);
`shuffle` gives every row another row's collaborative inputs; `on` re-evaluates unchanged (it equals the
run's results.json). The model is not retrained: this measures what the trained model relies on. For an
ablation in training as well, train with --set train.collab=drop. Writes RUN/ablation.json
({split: {mode: metrics}}, merged with earlier calls) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm.auto import tqdm

from sasrecllm_jax.errors import ConfigError, run_command
from sasrecllm_jax.evaluate import evaluate
from sasrecllm_jax.run_folder.files import write_whole
from sasrecllm_jax.score import Recommender

MODES = ("on", "drop", "shuffle")


def ablate(run: str | Path, modes=("drop", "shuffle"), split: str = "test") -> dict:
    run = Path(run)
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ConfigError(f"unknown ablation mode(s) {bad}; choose from {list(MODES)}")
    rec = Recommender(run)
    if rec.prompt != "hybrid":
        raise ConfigError(f"{run}: a {rec.cfg.train.method} run has no collaborative tokens to ablate "
                          f"(its prompts are {rec.prompt!r}); ablate a hybrid run (sasrecllm, collm_mf)")
    if split not in rec.assembly.dataset.splits:
        raise ConfigError(f"split {split!r} is not in the dataset; choose from {sorted(rec.assembly.dataset.splits)}")
    cfg = rec.cfg
    data = rec.assembly.split(split, "hybrid", rec.assembly.row_limit("eval"))
    out_path = run / "ablation.json"
    out = json.loads(out_path.read_text()) if out_path.exists() else {}
    for mode in modes:
        with tqdm(total=len(data), desc=f"{split}, collab {mode}", unit="row", dynamic_ncols=True) as bar:
            metrics, _ = evaluate(rec.scorer, rec.params, data, cfg, "hybrid", mode, progress=bar)
        out.setdefault(split, {})[mode] = metrics
        write_whole(out_path, json.dumps(out, indent=2))  # a grid's summary may be reading it
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sasrecllm_jax.ablate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a finished run folder of a hybrid method")
    p.add_argument("--modes", nargs="+", default=["drop", "shuffle"], help=f"from {list(MODES)}")
    p.add_argument("--split", default="test")
    args = p.parse_args(argv)

    def body():
        out = ablate(args.run, args.modes, args.split)
        fmt = lambda v: f"{v:8.4f}" if v is not None else f"{'-':>8}"
        print(f"{'collab':<9}{'AUC':>8}{'UAUC':>8}{'warm':>8}{'cold':>8}{'n':>7}")
        for mode, m in out[args.split].items():
            print(f"{mode:<9}{fmt(m['all']['auc'])}{fmt(m['all']['uauc'])}{fmt(m['warm']['auc'])}"
                  f"{fmt(m['cold']['auc'])}{m['all']['n']:>7}")

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
