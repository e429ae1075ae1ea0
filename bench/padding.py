"""Padding's share of the token slots of a phase's train batches, per padding choice, and what shared-prefix
packs (data.pack_train) save (host-side, no model run).

    python bench/padding.py                                             # the quickstart (configs/quickstart.yaml)
    python bench/padding.py --config configs/experiments/ml1m/sasrecllm_dual_stage.yaml --lengths 2 4 6 8

Renders the train prompts of the config's last prompted phase as a run would (its tokenizer, templates,
train rows and caps; the whole split, as on a GPU, unless --cpu-caps) and builds one epoch of that
phase's batches (the shuffled, length-grouped iterator at train.batch_size, the phase's seed). For
data.pad_multiple and each data.pad_lengths N it prints the share of padding in the token slots and the
number of batch shapes (train-step compilations); then, for the same choices, one epoch of packs (the
rows of one user and history share their prompt's start, as data.pack_train trains): rows per pack,
token slots per row (what the LLM computes per row trained, against the unpacked rows') and padding. It
reads the config's tokenizer, not the LLM's weights.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def epoch_padding(lengths: np.ndarray, batches: list[np.ndarray], batch_size: int,
                  pads) -> list[tuple[str, int, float, int]]:
    """(padding, token slots, padding's share of them, batch shapes) of an epoch of batches of sequences of
    `lengths` (rows, or packs), for each Padding."""
    real = sum(int(lengths[b].sum()) for b in batches)
    out = []
    for pad in pads:
        padded = [pad.length(lengths[b].max()) for b in batches]
        what = f"pad_lengths {len(pad.lengths)}: {list(pad.lengths)}" if pad.lengths else f"pad_multiple {pad.multiple}"
        slots = batch_size * sum(padded)
        out.append((what, slots, 1.0 - real / slots, len(set(padded))))
    return out


def main(argv=None) -> int:
    from sasrecllm_jax.config import load_config
    from sasrecllm_jax.data import packing
    from sasrecllm_jax.data.encode import SplitEncoder, row_limit
    from sasrecllm_jax.data.pipeline import BatchIterator, Padding
    from sasrecllm_jax.data.registry import resolve_dataset
    from sasrecllm_jax.train.phase import batch_order_seed
    from sasrecllm_jax.train.strategies import resolve_phases
    from sasrecllm_jax.weights.backbone import load_tokenizer_of
    root = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=root / "configs" / "quickstart.yaml")
    p.add_argument("--set", action="append", default=[], help="config overrides, as train.py's --set")
    p.add_argument("--lengths", type=int, nargs="+", default=[2, 3, 4, 6, 8], help="data.pad_lengths values")
    p.add_argument("--cpu-caps", action="store_true",
                   help="keep data.cpu_max_rows (the rows a CPU run trains on; they apply on the CPU backend only)")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.set)
    if not args.cpu_caps:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, cpu_max_rows={}))
    phase = next((ph for ph in reversed(resolve_phases(cfg)) if ph.prompt != "none"), None)
    if phase is None:
        print(f"error: {args.config} has no prompted phase: nothing is padded", file=sys.stderr)
        return 2
    tokenizer, source = load_tokenizer_of(cfg)
    data = SplitEncoder(cfg, resolve_dataset(cfg.data), tokenizer, source).split(
        "train", phase.prompt, row_limit(cfg, "train"), phase.rows)
    bs = cfg.train.batch_size

    def epoch(lengths: np.ndarray) -> list[np.ndarray]:  # the phase's iterator over rows or packs, one epoch
        it = BatchIterator(lengths, bs, seed=batch_order_seed(cfg.train.seed, phase.name))
        return [next(it) for _ in range(it.batches_per_epoch)]

    def pads(lengths: np.ndarray) -> list:  # pad_multiple, then each data.pad_lengths choice for these lengths
        return [Padding(cfg.data.pad_multiple)] + [
            Padding.for_training(data, dataclasses.replace(cfg.data, pad_lengths=n), lengths) for n in args.lengths]

    lengths = data.lengths()
    batches = epoch(lengths)
    print(f"phase {phase.name}: {len(data):,} {phase.prompt} prompts ({phase.rows} train rows) of "
          f"{lengths.min()}-{lengths.max()} tokens (median {int(np.median(lengths))}), {len(batches)} batches of {bs}")
    print("| padding | share of the token slots | batch shapes |\n|---|---|---|")
    unpacked = epoch_padding(lengths, batches, bs, pads(lengths))
    for what, _, share, shapes in unpacked:
        print(f"| {what} | {share:.1%} | {shapes} |")
    packs = packing.pack_split(data, cfg.data.pad_multiple)
    pack_batches = epoch(packs.lengths)
    per_row = unpacked[0][1] / len(data)  # token slots per row at pad_multiple
    print(f"\ndata.pack_train: {len(packs.rows):,} packs ({len(data) / len(packs.rows):.2f} rows per pack, at most "
          f"{max(map(len, packs.rows))}), {len(pack_batches)} batches of {bs} packs; unpacked at pad_multiple "
          f"{cfg.data.pad_multiple}: {per_row:.1f} token slots per row")
    print("| padding | token slots per row | against unpacked | padding's share | batch shapes |\n|---|---|---|---|---|")
    for what, slots, share, shapes in epoch_padding(packs.lengths, pack_batches, bs, pads(packs.lengths)):
        print(f"| {what} | {slots / len(data):.1f} | {slots / len(data) / per_row:.2f}x | {share:.1%} | {shapes} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
