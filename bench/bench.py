"""Speed of the SASRecLLM LoRA train step and of scoring, and the same step in HF transformers + PEFT.

    python bench/bench.py            # GPU: TinyLlama-1.1B bf16 at 16x256, 64x256 (train), 128x256 (score),
                                     #      then the peer (../shared/peers/hf_peft_lora_bench.py) in the same run
    python bench/bench.py --cpu      # CPU: SmolLM2-135M fp32 at 16x128 (forward and train step)
    python bench/bench.py --cpu --shapes 2x32   # a quick look

Random weights with the real shapes (jax.eval_shape, then random arrays: no slow init). The SASRec
encoder and the mapper are part of every step, LoRA r=8 / alpha 16 on q_proj, v_proj. Compilation is
timed separately and excluded from step times. Prints one JSON line per measurement, then a table.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np

from sasrecllm_jax.config import SMOLLM2_135M, TINYLLAMA_1_1B, LoraConfig, ModelConfig, PhaseConfig, TrainConfig
from sasrecllm_jax.models.hybrid import Hybrid
from sasrecllm_jax.train import partition
from sasrecllm_jax.train.optim import make_optimizer
from sasrecllm_jax.train.step import TrainState, make_train_step

PEER = Path(__file__).resolve().parents[2] / "shared" / "peers" / "hf_peft_lora_bench.py"
BF16_PEAK = {"H100": 989e12, "H200": 989e12}  # dense bf16 TFLOP/s (SXM)


def random_params(model, batch, seed=0):
    abstract = jax.eval_shape(model.init, jax.random.key(0), batch)["params"]
    rng = np.random.default_rng(seed)

    def fill(path, x):
        name = jax.tree_util.keystr(path)
        if "'b'" in name:  # LoRA b starts at zero
            return jnp.zeros(x.shape, x.dtype)
        if "weight" in name or "scale" in name:
            return jnp.ones(x.shape, x.dtype)
        return jnp.asarray(rng.standard_normal(x.shape, np.float32) * 0.02, x.dtype)
    return jax.tree_util.tree_map_with_path(fill, abstract)


def make_batch(B, T, vocab, L=25, seed=0):
    rng = np.random.default_rng(seed)
    return {"tokens": jnp.asarray(rng.integers(0, vocab, (B, T)), jnp.int32), "mask": jnp.ones((B, T), jnp.int32),
            "user_pos": jnp.full((B,), T // 3, jnp.int32), "item_pos": jnp.full((B,), 2 * T // 3, jnp.int32),
            "his": jnp.asarray(rng.integers(1, 3000, (B, L)), jnp.int32), "uid": jnp.ones((B,), jnp.int32),
            "iid": jnp.asarray(rng.integers(1, 3000, (B,)), jnp.int32),
            "label": jnp.asarray(rng.integers(0, 2, (B,)), jnp.float32), "weight": jnp.ones((B,), jnp.float32)}


def timed(fn, args_fn, steps, warmup):
    t0 = time.perf_counter()
    out = fn(*args_fn())
    jax.block_until_ready(out)
    compile_s = time.perf_counter() - t0
    for _ in range(warmup):
        out = fn(*args_fn())
    jax.block_until_ready(out)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        out = fn(*args_fn())
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t0)
    return compile_s, times


def flops_per_token(cfg, seq):
    """Peer's formula: 4 x non-embedding matmul params (fwd + activation grads) + attention."""
    h, L = cfg.hidden_size, cfg.num_layers
    attn = h * cfg.num_heads * cfg.head_dim * 2 + h * cfg.num_kv_heads * cfg.head_dim * 2
    n = L * (attn + 3 * h * cfg.intermediate_size)
    return 4 * n + 12 * L * seq * h


def peak_memory_gib():
    stats = jax.devices()[0].memory_stats() or {}
    return round(stats.get("peak_bytes_in_use", 0) / 2**30, 2) if stats else None


def bench_train(llm, B, T, steps, warmup):
    model_cfg = ModelConfig()
    lora = LoraConfig(dropout=0.05)
    batch = make_batch(B, T, llm.vocab_size)
    model = Hybrid(model_cfg, llm, num_users=1000, num_items=3000, answer_ids=(5, 6), lora=lora, deterministic=False,
                   frozen=("sasrec",))
    params = random_params(model, batch)
    trainable, frozen = partition.split(params, ["lora", "mapper"])
    phase = PhaseConfig(trainable=("lora", "mapper"), lr={"lora": 1e-3, "mapper": 1e-3})
    tx, schedules = make_optimizer(phase, trainable, 1000, TrainConfig(warmup_steps=10))
    apply_fn = lambda p, b, rngs: model.apply({"params": p}, b, rngs=rngs)
    step = jax.jit(make_train_step(apply_fn, tx, schedules), donate_argnums=0)
    holder = {"state": TrainState(jnp.int32(0), trainable, frozen, tx.init(trainable),
                                  jax.random.key_data(jax.random.key(0)))}

    def run(batch):
        holder["state"], m = step(holder["state"], batch)
        return m["loss"]
    compile_s, times = timed(run, lambda: (batch,), steps, warmup)
    return summarise("jax train step", llm, B, T, compile_s, times, train=True)


def bench_score(llm, B, T, steps, warmup):
    batch = make_batch(B, T, llm.vocab_size)
    model = Hybrid(ModelConfig(), llm, 1000, 3000, (5, 6), LoraConfig())
    params = random_params(model, batch)
    score = jax.jit(lambda p, b: model.apply({"params": p}, b))
    compile_s, times = timed(score, lambda: (params, batch), steps, warmup)
    return summarise("jax scoring", llm, B, T, compile_s, times, train=False)


def summarise(what, llm, B, T, compile_s, times, train):
    med = statistics.median(times)
    fpt = flops_per_token(llm, T) / (1 if train else 2)  # forward only: 2N per token
    device = jax.devices()[0].device_kind
    peak = next((v for k, v in BF16_PEAK.items() if k in device), None)
    row = {"what": what, "device": device, "batch": B, "seq": T, "compile_s": round(compile_s, 1),
           "step_ms_median": round(med * 1e3, 1), "samples_per_s": round(B / med, 1),
           "tokens_per_s": round(B * T / med), "tflops_per_s": round(fpt * B * T / med / 1e12, 2),
           "mfu_vs_bf16_peak": round(fpt * B * T / med / peak, 3) if peak else None,
           "peak_mem_gib": peak_memory_gib()}
    print(json.dumps(row), flush=True)
    return row


def run_peer(model_name, peer: Path):
    if not peer.exists():
        print(json.dumps({"peer": "missing", "path": str(peer)}))
        return []
    out = subprocess.run([sys.executable, str(peer), model_name], capture_output=True, text=True)
    rows = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
    for r in rows:
        print(json.dumps(r), flush=True)
    if out.returncode:
        print(out.stderr[-2000:], file=sys.stderr)
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cpu", action="store_true", help="CPU variant: SmolLM2-135M fp32")
    p.add_argument("--shapes", default=None, help="comma-separated BxT for training, e.g. 16x256,64x256")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--no-peer", action="store_true")
    p.add_argument("--peer", type=Path, default=PEER, help="hf_peft_lora_bench.py (default: ../shared/peers/)")
    args = p.parse_args()
    if args.cpu:
        llm, shapes, score_shapes, steps, warmup = SMOLLM2_135M, ["16x128"], ["16x128"], 3, 1
    else:
        llm = dataclasses.replace(TINYLLAMA_1_1B, param_dtype="bfloat16", dtype="bfloat16", attention="cudnn")
        shapes, score_shapes, steps, warmup = ["16x256", "64x256"], ["128x256"], 20, 5
    if args.shapes:
        shapes = score_shapes = args.shapes.split(",")
    steps = args.steps or steps
    print(json.dumps({"jax": jax.__version__, "devices": [d.device_kind for d in jax.devices()],
                      "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)}), flush=True)
    rows = []
    for s in score_shapes:
        B, T = map(int, s.split("x"))
        rows.append(bench_score(llm, B, T, steps, warmup))
    for s in shapes:
        B, T = map(int, s.split("x"))
        rows.append(bench_train(llm, B, T, steps, warmup))
    peer = [] if (args.cpu or args.no_peer) else run_peer("tinyllama-1.1b", args.peer)
    print("\n| what | batch x seq | samples/s | tokens/s | MFU (bf16 peak) | peak GiB | compile s | peer samples/s | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        match = [q for q in peer if q.get("batch") == r["batch"] and q.get("seq") == r["seq"] and q.get("attn") == "sdpa"]
        ps = match[0]["samples_per_s"] if match else None
        print(f"| {r['what']} | {r['batch']}x{r['seq']} | {r['samples_per_s']} | {r['tokens_per_s']} | "
              f"{r['mfu_vs_bf16_peak']} | {r['peak_mem_gib']} | {r['compile_s']} | {ps} | "
              f"{round(r['samples_per_s'] / ps, 2) if ps else '-'} |")


if __name__ == "__main__":
    main()
