"""Padding's share of the token slots a run's batches compute, per padding choice (host-side, no model run).

    python bench/padding.py                                             # the quickstart (configs/quickstart.yaml)
    python bench/padding.py --config configs/experiments/ml1m/sasrecllm_dual_stage.yaml --lengths 2 4 6 8

Renders a split's prompts as the run would (the config's tokenizer, templates and caps; the whole split,
as on a GPU, unless --cpu-caps) and builds the batches it would: one training epoch of the shuffled,
length-grouped iterator at train.batch_size, and the evaluation split sorted by length at
train.eval_batch_size (unpacked). For data.pad_multiple and each data.pad_lengths N it prints the share of
padding in the token slots and the number of batch shapes (compilations).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def padding_rows(data, batches: list[np.ndarray], batch_size: int, pads) -> list[tuple[str, float, int]]:
    lengths = data.lengths()
    out = []
    for pad in pads:
        padded = [pad.length(data, lengths[b].max()) for b in batches]
        slots = batch_size * sum(padded)
        real = sum(int(lengths[b].sum()) for b in batches)
        what = f"pad_lengths {pad.lengths}" if pad.lengths else f"pad_multiple {pad.multiple}"
        out.append((what, 1.0 - real / slots, len(set(padded))))
    return out


def main(argv=None) -> int:
    from sasrecllm_jax.assembly import Assembly
    from sasrecllm_jax.config import load_config
    from sasrecllm_jax.data.pipeline import BatchIterator, Padding
    from sasrecllm_jax.train.strategies import resolve_phases
    root = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=root / "configs" / "quickstart.yaml")
    p.add_argument("--set", action="append", default=[], help="config overrides, as train.py's --set")
    p.add_argument("--lengths", type=int, nargs="+", default=[2, 3, 4, 6, 8], help="data.pad_lengths values")
    p.add_argument("--prompt", default=None, help="hybrid or text (default: the last prompted phase's)")
    p.add_argument("--cpu-caps", action="store_true", help="apply data.cpu_max_rows (what a CPU run sees)")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.set)
    if not args.cpu_caps:
        import dataclasses
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, cpu_max_rows={}))
    prompt = args.prompt or next((ph.prompt for ph in reversed(resolve_phases(cfg)) if ph.prompt != "none"), "text")
    built = Assembly.build(cfg, needs_llm=True)
    pads = [Padding(cfg.data.pad_multiple)] + [Padding(cfg.data.pad_multiple, n) for n in args.lengths]
    t = cfg.train
    for split, rows, batch_size, shuffle in (("train", "train", t.batch_size, True),
                                              (cfg.data.eval_split, "eval", t.eval_batch_size, False)):
        data = built.split(split, prompt, built.row_limit(rows))
        it = BatchIterator(data.lengths(), batch_size, seed=t.seed, shuffle=shuffle)
        batches = [next(it) for _ in range(it.batches_per_epoch)]
        lengths = data.lengths()
        print(f"\n{split}: {len(data):,} {prompt} prompts of {lengths.min()}-{lengths.max()} tokens (median "
              f"{int(np.median(lengths))}), {len(batches)} batches of {batch_size}")
        print("| padding | share of the token slots | batch shapes |\n|---|---|---|")
        for what, share, shapes in padding_rows(data, batches, batch_size, pads):
            print(f"| {what} | {share:.1%} | {shapes} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
