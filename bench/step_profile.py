"""Where one of our steps spends its time, by part: forward or backward pass, matmuls or the rest.

    python bench/step_profile.py                         # the CPU train step of the table: SmolLM2-135M fp32 16x128
    python bench/step_profile.py --kind score --top 10   # forward scoring
    python bench/step_profile.py --remat none --dtype bfloat16 --shape 16x256

Builds the step bench.py times (random weights, LoRA r8 on q/v, the SASRec encoder and mapper in the
step), runs it twice, then traces one more run with `jax.profiler` and sums the time of every executed
XLA op from the trace. Each op is placed by the name XLA's compiled program gives it: in the forward
(`jvp`) or backward (`transpose`) pass, and a matmul (XLA's dot fusions, `ynn_fusion` / `dot` on the
CPU) or not (element-wise work, copies, transposes, buffer fills). Then the ops that took longest, with
their output shapes and where in the model they come from. Times are summed over the threads that ran
them, so the total can exceed the step's wall time.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import gzip
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def op_origins(hlo: str) -> dict[str, tuple[str, str]]:
    """{op name: (output shape, op_name metadata)} of a compiled program's text."""
    out = {}
    for m in re.finditer(r"^\s*%?([\w.\-]+) = (\S+) ([^\n]*)", hlo, re.M):
        origin = re.search(r'metadata=\{op_name="([^"]+)"', m.group(3))
        out[m.group(1)] = (m.group(2), origin.group(1) if origin else "?")
    return out


def op_times(trace_dir: Path) -> collections.Counter:
    """{op name: microseconds} summed over a jax.profiler trace's complete events (host bookkeeping left out)."""
    trace = next(trace_dir.rglob("*.trace.json.gz"))
    totals: collections.Counter = collections.Counter()
    for e in json.load(gzip.open(trace))["traceEvents"]:
        name = e.get("name", "")
        if e.get("ph") == "X" and not name.startswith("$") and "Thunk" not in name and "ThreadPool" not in name:
            totals[name] += e["dur"]
    return totals


def part(name: str, origin: str) -> tuple[str, str]:
    """(forward, backward or other: ops without a source, such as buffer fills; matmul or other ops)."""
    side = "backward" if "transpose(" in origin else "other" if origin == "?" else "forward"
    return side, "matmul" if name.startswith(("ynn_fusion", "dot", "onednn", "xnn")) else "other ops"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", choices=["train", "score"], default="train")
    p.add_argument("--model", default="SMOLLM2_135M")
    p.add_argument("--shape", default="16x128", help="batch x tokens")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--param-dtype", default=None, help="the base weights' dtype (default: --dtype)")
    p.add_argument("--matmul-dtype", default=None, help="LlamaConfig.matmul_dtype, e.g. bfloat16 with --dtype float32")
    p.add_argument("--remat", default="cheap", help="LlamaConfig.remat of the train step")
    p.add_argument("--scan-unroll", type=int, default=1, help="LlamaConfig.scan_unroll")
    p.add_argument("--top", type=int, default=20, help="how many of the longest ops to list")
    args = p.parse_args(argv)
    import jax
    from bench import make_batch, random_params, train_model, train_step_for
    from sasrecllm_jax import config as C
    from sasrecllm_jax.models.hybrid import Hybrid
    B, T = map(int, args.shape.split("x"))
    llm = dataclasses.replace(getattr(C, args.model), param_dtype=args.param_dtype or args.dtype, dtype=args.dtype,
                              matmul_dtype=args.matmul_dtype, attention="xla",
                              remat=args.remat, scan_unroll=args.scan_unroll)
    batch = make_batch(B, T, llm.vocab_size)
    if args.kind == "train":
        model = train_model(llm)
        step, state = train_step_for(model, random_params(model, batch))
        hlo = step.lower(state, batch).compile().as_text()
        holder = {"state": state}

        def run():
            holder["state"], m = step(holder["state"], batch)
            return m["loss"]
    else:
        model = Hybrid(C.ModelConfig(), llm, 1000, 3000, (5, 6), C.LoraConfig())
        params = random_params(model, batch)
        score = jax.jit(lambda p, b: model.apply({"params": p}, b))
        hlo = score.lower(params, batch).compile().as_text()
        run = lambda: score(params, batch)
    for _ in range(2):  # compile, then one warm run
        jax.block_until_ready(run())
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        with jax.profiler.trace(d):
            jax.block_until_ready(run())
        wall = time.perf_counter() - t0
        times = op_times(Path(d))
    origins = op_origins(hlo)
    parts: collections.Counter = collections.Counter()
    for name, us in times.items():
        parts[part(name, origins.get(name, ("?", "?"))[1])] += us
    print(f"{args.kind} step, {args.model} {args.shape} {args.dtype} (weights {llm.param_dtype}, "
          f"matmuls {llm.matmul_dtype or llm.dtype}), remat {args.remat}, "
          f"scan_unroll {args.scan_unroll}, "
          f"backend {jax.default_backend()}: {wall:.2f} s traced, {sum(times.values()) / 1e6:.2f} s of op time")
    print("\n| pass | matmuls s | other ops s |\n|---|---|---|")
    for side in ("forward", "backward", "other"):
        if parts[(side, "matmul")] or parts[(side, "other ops")]:
            print(f"| {side} | {parts[(side, 'matmul')] / 1e6:.2f} | {parts[(side, 'other ops')] / 1e6:.2f} |")
    print("\n| op | s | pass | output | from |\n|---|---|---|---|---|")
    for name, us in times.most_common(args.top):
        shape, origin = origins.get(name, ("?", "?"))
        where = re.sub(r"^jit\([^)]*\)/", "", origin).split("closed_call/")[-1][:90]
        print(f"| {name} | {us / 1e6:.3f} | {part(name, origin)[0]} | {shape} | {where} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
