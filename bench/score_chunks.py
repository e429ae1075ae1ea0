"""Scoring a batch whole or in chunks of rows inside one program (`sasrecllm_jax.evaluate.in_chunks`), CPU.

    python bench/score_chunks.py                                     # bf16 64x192, whole vs 16-row chunks
    python bench/score_chunks.py --dtype float32 --shape 128x128 --chunks 16 32

SmolLM2-135M's architecture with random weights, the hybrid's forward pass (SASRec, mapper, Yes/No
logits). Each variant is compiled first, then called in turn (A B A B ...) in one process, so all see
the same load; prints tokens/s per call and the median, and the largest score difference to the whole
batch (float rounding: the chunks multiply matrices of another shape).
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--shape", default="64x192", help="rows x tokens of the batch")
    p.add_argument("--chunks", type=int, nargs="+", default=[16], help="rows per chunk (each a variant)")
    p.add_argument("--calls", type=int, default=5)
    args = p.parse_args()

    import jax
    import numpy as np
    from bench import make_batch, random_params
    from sasrecllm_jax import config as C
    from sasrecllm_jax.evaluate import in_chunks
    from sasrecllm_jax.models.hybrid import Hybrid

    B, T = map(int, args.shape.split("x"))
    llm = dataclasses.replace(C.SMOLLM2_135M, param_dtype=args.dtype, dtype=args.dtype)
    model = Hybrid(C.ModelConfig(), llm, 1000, 3000, (5, 6), C.LoraConfig())
    batch = {k: v for k, v in make_batch(B, T, llm.vocab_size).items() if k not in ("label", "weight")}
    params = random_params(model, batch)
    apply = lambda params, batch: model.apply({"params": params}, batch)
    variants = {"whole": jax.jit(apply)} | {f"{r}-row chunks": jax.jit(in_chunks(apply, r)) for r in args.chunks}
    whole = None
    for name, fn in variants.items():
        t0 = time.perf_counter()
        out = np.asarray(fn(params, batch))
        whole = out if whole is None else whole
        print(f"{name}: compiled and ran in {time.perf_counter() - t0:.1f} s, "
              f"largest difference to the whole batch {np.abs(out - whole).max():.2g}", flush=True)
    rates = {name: [] for name in variants}
    for _ in range(args.calls):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(params, batch))
            rates[name].append(B * T / (time.perf_counter() - t0))
    print(f"\n{args.dtype} {args.shape}, {jax.devices()[0].device_kind}, tokens/s (medians of {args.calls}):")
    for name, r in rates.items():
        print(f"  {name:16s} {statistics.median(r):7.0f}   ({', '.join(f'{x:.0f}' for x in r)})")


if __name__ == "__main__":
    main()
