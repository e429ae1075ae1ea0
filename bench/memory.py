"""Device memory a compiled LoRA train step needs, per remat policy, without running it (works on CPU).

    python bench/memory.py                                   # TinyLlama-1.1B, bf16, 16x256
    python bench/memory.py --model SMOLLM2_135M --shape 16x320 --dtype float32

Compiles the same hybrid step as bench.py (SASRec + mapper + LoRA on q/v, XLA attention) from abstract
parameters and prints XLA's `Compiled.memory_analysis()`: temporaries (activations kept for the backward
pass, workspace) and arguments. The CPU's buffer assignment is not the GPU's, so read the figures as a
comparison between policies, not as a GPU's peak memory.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def compiled_memory(model_name: str, B: int, T: int, remat: str, dtype: str) -> dict:
    import jax
    from bench import make_batch, train_model, train_step_for
    from sasrecllm_jax import config as C
    llm = dataclasses.replace(getattr(C, model_name), param_dtype=dtype, dtype=dtype, attention="xla", remat=remat)
    batch = make_batch(B, T, llm.vocab_size)
    model = train_model(llm)
    step, state = train_step_for(model, jax.eval_shape(model.init, jax.random.key(0), batch)["params"])
    t0 = time.perf_counter()
    m = step.lower(state, batch).compile().memory_analysis()
    return {"remat": remat, "temp_gib": m.temp_size_in_bytes / 2**30, "args_gib": m.argument_size_in_bytes / 2**30,
            "compile_s": time.perf_counter() - t0}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="TINYLLAMA_1_1B")
    p.add_argument("--shape", default="16x256", help="batch x tokens")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--remat", default="none,cheap", help="comma-separated policies (LlamaConfig.remat)")
    args = p.parse_args()
    B, T = map(int, args.shape.split("x"))
    import jax
    print(f"{args.model} {args.shape} {args.dtype}, XLA attention, backend {jax.default_backend()}")
    print("| remat | temporaries GiB | arguments GiB | compile s |\n|---|---|---|---|")
    for remat in args.remat.split(","):
        r = compiled_memory(args.model, B, T, remat, args.dtype)
        print(f"| {remat} | {r['temp_gib']:.2f} | {r['args_gib']:.2f} | {r['compile_s']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
