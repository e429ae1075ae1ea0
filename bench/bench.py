"""Speed of the SASRecLLM LoRA train step and of scoring, beside HF transformers + PEFT on the same card.

    python bench/bench.py                 # GPU: the full table (about 5 minutes on an H100)
    python bench/bench.py --cpu           # CPU: SmolLM2-135M fp32 at 16x128, ours and the peer interleaved
    python bench/bench.py --cpu --shapes 2x32 --steps 2   # a quick look
    python bench/bench.py --epoch         # also one ML-1M epoch + test evaluation through the real loop

GPU rows: our jitted step for TINYLLAMA_1_1B (random weights, bf16, cuDNN attention; LoRA r=8 /
alpha 16 on q_proj, v_proj; the SASRec encoder and the mapper in every step) at 16x256 and 64x256,
SMOLLM2_135M at the same shapes, forward-only scoring at 128x256; the peer
(hf_peft_lora_bench.py, --peer) at the same shapes, and the peer's model forward-only for
scoring (bench/peer_score.py). Every measurement runs in its own process, so peak device memory is
that measurement's own, and compilation is timed apart from the steps. MFU: model FLOPs per token
(4 x non-embedding matmul params + attention for a LoRA step, half that for scoring; the peer's
formula) over the card's dense bf16 peak, and over the bf16 matmul rate measured in the same run.

CPU rows (--cpu): SmolLM2-135M's architecture in fp32 (random weights), our train step (per --remat
policy) and scoring beside the peer's on the CPU (bench/peer_cpu.py: transformers + PEFT, eager and
under torch.compile). Each side runs in its own process, set up and compiled first; then one step of
each in turn (A B C A B C ..., a short rest before each), so that all see the same load from other
jobs on the machine. The table gives medians and the load average before and after.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PEER = ROOT.parent / "shared" / "peers" / "hf_peft_lora_bench.py"
BF16_PEAK = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12}  # dense bf16 FLOP/s
PEER_NAMES = {"TINYLLAMA_1_1B": "tinyllama-1.1b", "SMOLLM2_135M": "smollm2-135m"}


# ----------------------------------------------------------------------------- one measurement
def random_params(model, batch, seed=0):
    """Random weights with the real shapes, drawn on the device (host RNG for 1.1B values is slow)."""
    import jax
    import jax.numpy as jnp
    abstract = jax.eval_shape(model.init, jax.random.key(0), batch)["params"]
    key = jax.random.key(seed)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    out = []
    for i, (path, x) in enumerate(leaves):
        name = jax.tree_util.keystr(path)
        if "'b'" in name:  # LoRA b starts at zero
            out.append(jnp.zeros(x.shape, x.dtype))
        elif "weight" in name or "scale" in name:
            out.append(jnp.ones(x.shape, x.dtype))
        else:
            out.append((jax.random.normal(jax.random.fold_in(key, i), x.shape, jnp.float32) * 0.02).astype(x.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


def make_batch(B, T, vocab, L=25, seed=0):
    import jax.numpy as jnp
    import numpy as np
    rng = np.random.default_rng(seed)
    return {"tokens": jnp.asarray(rng.integers(0, vocab, (B, T)), jnp.int32), "mask": jnp.ones((B, T), jnp.int32),
            "user_pos": jnp.full((B,), T // 3, jnp.int32), "item_pos": jnp.full((B,), 2 * T // 3, jnp.int32),
            "his": jnp.asarray(rng.integers(1, 3000, (B, L)), jnp.int32), "uid": jnp.ones((B,), jnp.int32),
            "iid": jnp.asarray(rng.integers(1, 3000, (B,)), jnp.int32),
            "label": jnp.asarray(rng.integers(0, 2, (B,)), jnp.float32), "weight": jnp.ones((B,), jnp.float32)}


def timed(fn, steps, warmup):
    import jax
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    compile_s = time.perf_counter() - t0
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return compile_s, times


def flops_per_token(cfg, seq, train: bool):
    """The peer's formula: a LoRA step costs 4 x non-embedding matmul params (forward + activation
    gradients; frozen weights get no weight gradients) + attention; scoring is half of it."""
    h, L = cfg.hidden_size, cfg.num_layers
    attn = h * cfg.num_heads * cfg.head_dim * 2 + h * cfg.num_kv_heads * cfg.head_dim * 2
    n = L * (attn + 3 * h * cfg.intermediate_size)
    per = 4 * n + 12 * L * seq * h
    return per if train else per / 2


def peak_memory_gib():
    import jax
    stats = jax.devices()[0].memory_stats() or {}
    return round(stats["peak_bytes_in_use"] / 2**30, 2) if "peak_bytes_in_use" in stats else None


def train_model(llm):
    """The hybrid the train rows time: SASRec (frozen) + mapper + LoRA r8 on q/v with dropout 0.05."""
    from sasrecllm_jax import config as C
    from sasrecllm_jax.models.hybrid import Hybrid
    return Hybrid(C.ModelConfig(), llm, num_users=1000, num_items=3000, answer_ids=(5, 6),
                  lora=C.LoraConfig(dropout=0.05), deterministic=False, frozen=("sasrec",))


def train_step_for(model, params):
    """(our jitted train step, donating its state; its first state) for params: arrays, or
    ShapeDtypeStructs for an abstract state to compile from (bench/memory.py)."""
    import jax
    import jax.numpy as jnp
    from sasrecllm_jax import config as C
    from sasrecllm_jax.train import groups as partition
    from sasrecllm_jax.train.optim import make_optimizer
    from sasrecllm_jax.train.step import TrainState, make_train_step
    trainable, frozen = partition.split(params, ["lora", "mapper"])
    phase = C.PhaseConfig(trainable=("lora", "mapper"), lr={"lora": 1e-3, "mapper": 1e-3})
    tx, schedules = make_optimizer(phase, trainable, 1000, C.TrainConfig(warmup_steps=10))
    apply_fn = lambda p, b, rngs: model.apply({"params": p}, b, rngs=rngs)
    step = jax.jit(make_train_step(apply_fn, tx, schedules), donate_argnums=0)
    if isinstance(jax.tree_util.tree_leaves(params)[0], jax.ShapeDtypeStruct):
        return step, TrainState(jax.ShapeDtypeStruct((), jnp.int32), trainable, frozen, jax.eval_shape(tx.init, trainable),
                                jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))))
    return step, TrainState(jnp.int32(0), trainable, frozen, tx.init(trainable), jax.random.key_data(jax.random.key(0)))


def prepare(job: dict):
    """(run, llm config or None): run() does one jitted scoring pass, train step or matmul."""
    import jax
    import jax.numpy as jnp
    from sasrecllm_jax import config as C
    if job["kind"] == "matmul":  # the dense matmul rate this card reaches in this run
        n, dtype = job["n"], jnp.dtype(job["dtype"])
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
        b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
        mm = jax.jit(lambda a, b: a @ b)
        return (lambda: mm(a, b)), None
    llm = getattr(C, job["model"])
    llm = dataclasses.replace(llm, **job["llm_overrides"])
    B, T = job["batch"], job["seq"]
    batch = make_batch(B, T, llm.vocab_size)
    from sasrecllm_jax.models.hybrid import Hybrid
    if job["kind"] == "score":
        model = Hybrid(C.ModelConfig(), llm, 1000, 3000, (5, 6), C.LoraConfig())
        params = random_params(model, batch)
        score = jax.jit(lambda p, b: model.apply({"params": p}, b))
        return (lambda: score(params, batch)), llm
    model = train_model(llm)
    step, state = train_step_for(model, random_params(model, batch))
    holder = {"state": state}

    def run():
        holder["state"], m = step(holder["state"], batch)
        return m["loss"]
    return run, llm


def measure(job: dict) -> dict:
    import jax
    steps, warmup = job["steps"], job["warmup"]
    run, llm = prepare(job)
    compile_s, times = timed(run, steps, warmup)
    med = statistics.median(times)
    if job["kind"] == "matmul":
        n = job["n"]
        return {"what": f"matmul {n}^3 {job['dtype']}", "flops_per_s": 2 * n**3 / med, "compile_s": round(compile_s, 1)}
    B, T = job["batch"], job["seq"]
    flops = flops_per_token(llm, T, job["kind"] == "train") * B * T / med
    return {"what": f"jax {job['kind']}", "model": job["model"], "batch": B, "seq": T,
            "attention": llm.attention, "dtype": llm.dtype, "remat": llm.remat, "compile_s": round(compile_s, 1),
            "step_ms_median": round(med * 1e3, 2), "step_ms_min": round(min(times) * 1e3, 2),
            "samples_per_s": round(B / med, 1), "tokens_per_s": round(B * T / med), "flops_per_s": flops,
            "peak_mem_gib": peak_memory_gib(), "device": jax.devices()[0].device_kind}


def serve(job: dict):
    """bench.py's interleaved CPU mode, our side: compile, print "ready", then one timed step per stdin line."""
    import jax
    run, _ = prepare(job)
    t0 = time.perf_counter()
    jax.block_until_ready(run())
    print(json.dumps({"ready": True, "compile_s": round(time.perf_counter() - t0, 1)}), flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        t0 = time.perf_counter()
        jax.block_until_ready(run())
        print(json.dumps({"t": time.perf_counter() - t0}), flush=True)


# ----------------------------------------------------------------------------- the whole table
def subprocess_rows(cmd: list[str], timeout: float) -> tuple[list[dict], str]:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [], f"timed out after {timeout:.0f} s"
    rows = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
    return rows, (out.stderr[-1500:] if out.returncode else "")


def run_job(job: dict, timeout: float) -> dict | None:
    rows, err = subprocess_rows([sys.executable, __file__, "--one", json.dumps(job)], timeout)
    if rows:
        return rows[-1]
    print(json.dumps({"job": job, "error": err.strip().splitlines()[-1:] if err else "no output"}), flush=True)
    if job.get("llm_overrides", {}).get("attention") == "cudnn":  # record the failure, then try XLA attention
        return run_job({**job, "llm_overrides": {**job["llm_overrides"], "attention": "xla"}}, timeout)
    return None


def table(rows: list[dict], peer_train: list[dict], peer_score: list[dict], ceiling: float | None, peak: float | None):
    def at(what, model, shape):  # our rows of one kind, model and shape (one per remat policy)
        return [r for r in rows if r["what"] == what and r["model"] == model and f"{r['batch']}x{r['seq']}" == shape]

    how = lambda r: f" (remat {r['remat']})" if r["what"] == "jax train" else ""
    lines = ["| what | model | batch x seq | samples/s | tokens/s | MFU (bf16 peak) | MFU (measured matmul) | "
             "peak GiB | compile s | peer samples/s | peer GiB | ratio |", "|---" * 12 + "|"]
    verdicts = []
    for r in rows:
        pool = peer_score if r["what"] == "jax score" else peer_train
        p = next((q for q in pool if q.get("model") == PEER_NAMES.get(r["model"]) and q.get("batch") == r["batch"]
                  and q.get("seq") == r["seq"] and q.get("attn", "sdpa") == "sdpa"), None)
        ratio = round(r["samples_per_s"] / p["samples_per_s"], 2) if p else None
        r.update(peer_samples_per_s=p and p["samples_per_s"], peer_mem_gib=p and p.get("peak_mem_gib"), ratio=ratio,
                 mfu_peak=round(r["flops_per_s"] / peak, 3) if peak else None,
                 mfu_ceiling=round(r["flops_per_s"] / ceiling, 3) if ceiling else None)
        cell = lambda v: "-" if v is None else v
        lines.append(f"| {r['what']}{how(r)} | {r['model']} | {r['batch']}x{r['seq']} | {r['samples_per_s']} | {r['tokens_per_s']} | "
                     f"{cell(r['mfu_peak'])} | {cell(r['mfu_ceiling'])} | {cell(r['peak_mem_gib'])} | {r['compile_s']} | "
                     f"{cell(r['peer_samples_per_s'])} | {cell(r['peer_mem_gib'])} | {cell(ratio)} |")
    target = lambda what, model, shape: max(at(what, model, shape), key=lambda r: r["samples_per_s"], default=None)
    for what, model, shape, need in [("jax train", "TINYLLAMA_1_1B", "16x256", 2.0), ("jax train", "TINYLLAMA_1_1B", "64x256", 1.8),
                                     ("jax score", "TINYLLAMA_1_1B", "128x256", 2.0)]:
        r = target(what, model, shape)
        if r is not None and r["ratio"] is not None:
            verdicts.append(f"- {what} {shape}{how(r)}: {r['ratio']}x the peer (target {need}x): "
                            f"{'met' if r['ratio'] >= need else 'NOT met'}")
        for m in at(what, model, shape):
            if m.get("peer_mem_gib") and m["peak_mem_gib"]:
                ok = m["peak_mem_gib"] <= m["peer_mem_gib"]
                verdicts.append(f"- {what} {shape}{how(m)} memory: {m['peak_mem_gib']} GiB vs the peer's "
                                f"{m['peer_mem_gib']} GiB: {'met' if ok else 'NOT met'}")
    r = target("jax train", "TINYLLAMA_1_1B", "64x256")
    if r is not None and r["mfu_peak"] is not None:
        verdicts.append(f"- MFU at 64x256 (remat {r['remat']}): {r['mfu_peak']:.1%} of the bf16 peak (target 45%): "
                        f"{'met' if r['mfu_peak'] >= 0.45 else 'NOT met'}")
    return lines, verdicts


def epoch_measure(timeout: float, overrides: list[str]) -> dict | None:
    """One ML-1M epoch of hybrid training (mapper + LoRA, SmolLM2) and the test evaluation, through the real loop."""
    workdir = Path(os.environ.get("OUT", "/tmp")) / f"bench-epoch-{os.getpid()}-{len(overrides)}"
    phases = json.dumps([{"name": "hybrid", "trainable": ["mapper", "lora"], "prompt": "hybrid", "epochs": 1,
                          "lr": {"mapper": 1e-3, "lora": 1e-3}, "eval_every": 100000}])
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs/experiments/ml1m/base.yaml"),
           "--set", "train.method=sasrecllm", "--set", f"train.phases={phases}", "--set", "train.log_every=100",
           "--set", "model.llm_overrides={param_dtype: bfloat16, dtype: bfloat16, attention: cudnn}",
           *[a for o in overrides for a in ("--set", o)], "--workdir", str(workdir)]
    t0 = time.time()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        print(json.dumps({"epoch": "timed out", "after_s": timeout}), flush=True)
        return None
    res = workdir / "results.json"
    if out.returncode or not res.exists():
        print(json.dumps({"epoch": "failed", "stderr": out.stderr[-1500:]}), flush=True)
        return None
    r = json.loads(res.read_text())
    tm = r["timing"]
    h = tm["hybrid"]
    ev = tm["evaluate test"]
    row = {"what": "ML-1M epoch (SmolLM2, hybrid, mapper+LoRA)", "steps": h["steps"],
           "epoch_s_steady": round((h["steady_s_per_step"] or 0) * h["steps"], 1), "epoch_wall_s": h["wall_s"],
           "steady_samples_per_s": h.get("steady_rows_per_s"), "rows": h.get("rows"),
           "steady_real_tokens_per_s": h.get("steady_real_tokens_per_s"), "padding_share": h.get("padding_share"),
           "compile_s": h["compile_s"], "batch_shapes": h["batch_shapes"],
           "test_eval_s": round(ev["wall_s"] - ev["compile_s"], 2), "test_eval_wall_s": ev["wall_s"],
           "test_eval_compile_s": ev["compile_s"], "test_rows": ev["rows"],
           "test_auc": r["test"]["all"]["auc"], "wall_s": round(time.time() - t0, 1)}
    print(json.dumps(row), flush=True)
    return row


# ----------------------------------------------------------------------------- CPU: ours and the peer, interleaved
class Worker:
    """One measurement's process that sets up (compiles) once, then times one step per request."""

    def __init__(self, label: str, cmd: list[str], env: dict, info: dict, timeout: float):
        import queue
        import tempfile
        import threading
        self.label, self.info, self.timeout, self.times = label, dict(info), timeout, []
        self.err = tempfile.TemporaryFile(mode="w+")
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True,
                                  env={**os.environ, **env})
        self.q = queue.Queue()
        threading.Thread(target=lambda: [self.q.put(l) for l in self.p.stdout] + [self.q.put(None)], daemon=True).start()

    def _reply(self) -> dict:
        import queue
        while True:
            try:
                line = self.q.get(timeout=self.timeout)
            except queue.Empty:
                line = None
            if line is None:
                self.err.seek(0)
                raise RuntimeError(f"{self.label}: no answer; " + " | ".join(self.err.read().strip().splitlines()[-3:]))
            if line.startswith("{"):
                return json.loads(line)

    def ready(self):
        self.info.update({k: v for k, v in self._reply().items() if k != "ready"})

    def step(self) -> float:
        self.p.stdin.write("step\n")
        self.p.stdin.flush()
        return self._reply()["t"]

    def close(self):
        try:
            self.p.stdin.write("quit\n")
            self.p.stdin.close()
            self.p.wait(30)
        except Exception:
            self.p.kill()


def load_now() -> str:
    """The 1-minute load average and the busiest other processes (our own workers included in the load)."""
    l1, l5, _ = os.getloadavg()
    ps = subprocess.run(["ps", "-eo", "pcpu,args", "--sort=-pcpu"], capture_output=True, text=True).stdout.splitlines()[1:4]
    return f"load {l1:.2f} (5 min {l5:.2f}); top: " + "; ".join(" ".join(x.split()[:3])[:70] for x in ps)


def cpu_side_by_side(args, shape: str, steps: int) -> list[dict]:
    """Ours and the peer's CPU step, each in its own process, timed in turn (A B C A B C ...): all see the same load."""
    from sasrecllm_jax.config import SMOLLM2_135M
    B, T = map(int, shape.split("x"))
    peer = [sys.executable, str(ROOT / "bench" / "peer_cpu.py")]
    ours = lambda job: [sys.executable, __file__, "--serve", json.dumps(job)]
    base = {"model": "SMOLLM2_135M", "batch": B, "seq": T}
    rows = []
    for kind in ("train", "score"):
        plan = []  # (label, cmd, env, info)
        variants = [{"remat": r} for r in args.remat.split(",")] if kind == "train" else [{}]
        variants += [json.loads(v) for v in args.ours_set]
        for ov in variants:
            for flags in [None] + args.ours_xla_flags:
                env = {} if flags is None else {"XLA_FLAGS": flags}
                label = "ours " + " ".join([f"{k}={v}" for k, v in ov.items()] + ([flags] if flags else []))
                plan.append((label.strip(), ours({**base, "kind": kind, "llm_overrides": ov}), env,
                             {"side": "ours", "kind": kind, "settings": {**ov, **env}}))
        if not args.no_peer:
            for comp in (False, True)[:1 if args.no_peer_compile else 2]:
                for env in [""] + args.peer_env:
                    envd = dict(kv.split("=", 1) for kv in env.split(",") if kv)
                    for dtype in args.peer_dtype.split(","):
                        job = {"kind": kind, "batch": B, "seq": T, "compile": comp, "threads": args.threads,
                               "dtype": dtype}
                        plan.append((f"peer {dtype}{' torch.compile' if comp else ' eager'}{' ' + env if env else ''}",
                                     peer + ["--serve", json.dumps(job)], envd,
                                     {"side": "peer", "kind": kind, "env": env, "dtype": dtype}))
        workers = []
        for label, cmd, env, info in plan:  # set up one at a time: compilation is not what we time
            w = Worker(label, cmd, env, info, args.job_timeout)
            try:
                w.ready()
                workers.append(w)
                print(json.dumps({"ready": label, **w.info}), flush=True)
            except RuntimeError as e:
                print(json.dumps({"failed": label, "error": str(e)[-600:]}), flush=True)
                w.close()
        load_before = load_now()
        for r in range(steps + 1):  # round 0 warms up; each round starts with the next worker
            for w in workers[r % len(workers):] + workers[:r % len(workers)]:
                time.sleep(args.gap)
                t = w.step()
                if r:
                    w.times.append(t)
        load_after = load_now()
        for w in workers:
            w.close()
            med = statistics.median(w.times)
            flops = flops_per_token(SMOLLM2_135M, T, kind == "train") * B * T / med
            rows.append({"label": w.label, **w.info, "shape": shape, "steps": len(w.times),
                         "step_s_median": round(med, 3), "step_s_min": round(min(w.times), 3),
                         "samples_per_s": round(B / med, 2), "gflops_per_s": round(flops / 1e9, 1),
                         "load_before": load_before, "load_after": load_after})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def cpu_table(rows: list[dict]) -> list[str]:
    dtypes = sorted({r.get("dtype", "float32") for r in rows if r["side"] == "peer"}, reverse=True) or ["float32"]
    lines = ["| side | what | settings | samples/s | step s (median / min) | GFLOP/s | setup or compile s | "
             + " | ".join(f"ratio to the peer's best {d}" for d in dtypes) + " |", "|---" * (7 + len(dtypes)) + "|"]
    for kind in ("train", "score"):
        peers = [r for r in rows if r["kind"] == kind and r["side"] == "peer"]
        best = {d: max((r["samples_per_s"] for r in peers if r.get("dtype", "float32") == d), default=None)
                for d in dtypes}
        for r in (x for x in rows if x["kind"] == kind):
            if r["side"] == "peer":
                settings = (f"torch {r.get('threads')} threads, {r.get('attn')}, {r.get('dtype')}, logits_to_keep=1"
                            + (", torch.compile" if r.get("compile") else ", eager") + (f", {r['env']}" if r.get("env") else ""))
            else:
                settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items()) or "defaults"
            ratio = " | ".join(f"{r['samples_per_s'] / best[d]:.2f}x" if best[d] and r["side"] == "ours" else "-"
                               for d in dtypes)
            what = "LoRA train step" if kind == "train" else "scoring (forward)"
            setup = r.get("compile_s", r.get("setup_s"))
            lines.append(f"| {r['side']} | {what} {r['shape']} | {settings} | {r['samples_per_s']} | "
                         f"{r['step_s_median']} / {r['step_s_min']} | {r['gflops_per_s']} | {setup} | {ratio} |")
    return lines


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="CPU variant: SmolLM2-135M fp32, ours and the peer interleaved")
    p.add_argument("--shapes", default=None, help="comma-separated BxT for the train rows, e.g. 16x256,64x256")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--no-peer", action="store_true")
    p.add_argument("--smollm2", action="store_true", help="GPU: add SmolLM2-135M train rows (and the peer's)")
    p.add_argument("--epoch", action="store_true", help="also time an ML-1M epoch and the test evaluation")
    p.add_argument("--epoch-packed", action="store_true",
                   help="with --epoch: a second epoch on shared-prefix packs (data.pack_train: true)")
    p.add_argument("--epoch-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override for the epoch run, e.g. model.llm_overrides={attention: xla}")
    p.add_argument("--peer", type=Path, default=PEER, help="the peer script hf_peft_lora_bench.py")
    p.add_argument("--remat", default="none", help="comma-separated remat policies for our train rows, e.g. "
                   "none,cheap (see LlamaConfig.remat); each gets its own row")
    p.add_argument("--job-timeout", type=float, default=600, help="seconds for each measurement's process")
    p.add_argument("--threads", type=int, default=0, help="CPU: the peer's torch.set_num_threads (0: all cores)")
    p.add_argument("--no-peer-compile", action="store_true", help="CPU: the peer eager only (torch.compile "
                   "takes minutes to compile on 2 cores)")
    p.add_argument("--peer-env", action="append", default=[], metavar="K=V,...",
                   help="CPU: also run the peer with these environment variables, e.g. OMP_WAIT_POLICY=PASSIVE "
                   "(libgomp's threads sleep instead of spinning: faster when other jobs share the cores)")
    p.add_argument("--peer-dtype", default="float32", help="CPU: comma-separated dtypes of the peer's model, "
                   "each its own row, e.g. float32,bfloat16 (bfloat16: PEFT keeps the adapters in float32)")
    p.add_argument("--gap", type=float, default=0.5, help="CPU: seconds of rest before each timed step")
    p.add_argument("--ours-set", action="append", default=[], metavar="JSON",
                   help="CPU: one more row of ours with these LlamaConfig overrides, e.g. '{\"scan_unroll\": 2}'")
    p.add_argument("--ours-xla-flags", action="append", default=[], metavar="FLAGS",
                   help="CPU: also run each of our rows with XLA_FLAGS=FLAGS")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one measurement, in this process
    p.add_argument("--serve", default=None, help=argparse.SUPPRESS)  # internal: interleaved CPU measurement
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(json.loads(args.one))), flush=True)
        return
    if args.serve:
        return serve(json.loads(args.serve))
    import jax
    if args.cpu:
        import peft
        import torch
        import transformers
        print(json.dumps({"jax": jax.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
                          "peft": peft.__version__, "cores": os.cpu_count(), "xla_flags": os.environ.get("XLA_FLAGS"),
                          "date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(sys.argv)}), flush=True)
        rows = cpu_side_by_side(args, (args.shapes or "16x128").split(",")[0], args.steps or 5)
        print()
        print("\n".join(cpu_table(rows)))
        print(f"\nload before / after the train rows: {rows[0]['load_before']} / {rows[0]['load_after']}"
              f"\nload before / after the scoring rows: {rows[-1]['load_before']} / {rows[-1]['load_after']}" if rows else "")
        return
    gpu = {"param_dtype": "bfloat16", "dtype": "bfloat16", "attention": "cudnn"}
    jobs = [("score", "TINYLLAMA_1_1B", "128x256"), ("train", "TINYLLAMA_1_1B", "16x256"),
            ("train", "TINYLLAMA_1_1B", "64x256")]
    jobs += [("train", "SMOLLM2_135M", "16x256"), ("train", "SMOLLM2_135M", "64x256")] if args.smollm2 else []
    steps, warmup, mm = 20, 5, {"n": 8192, "dtype": "bfloat16"}
    if args.shapes:  # scoring at the first shape, training at each, with the first job's model
        shapes, model = args.shapes.split(","), jobs[0][1]
        jobs = [("score", model, shapes[0])] + [("train", model, s) for s in shapes]
    steps = args.steps or steps
    import transformers
    print(json.dumps({"jax": jax.__version__, "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else None,
                      "transformers": transformers.__version__, "devices": [d.device_kind for d in jax.devices()],
                      "date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(sys.argv)}), flush=True)
    device = jax.devices()[0].device_kind
    peak = next((v for k, v in BF16_PEAK.items() if k in device), None)
    mmrow = run_job({"kind": "matmul", "steps": steps, "warmup": warmup, **mm}, min(300, args.job_timeout))
    ceiling = mmrow and mmrow["flops_per_s"]
    if mmrow:
        print(json.dumps(mmrow), flush=True)
    rows = []
    for kind, model, shape in jobs:
        B, T = map(int, shape.split("x"))
        for remat in (args.remat.split(",") if kind == "train" else ["none"]):
            r = run_job({"kind": kind, "model": model, "batch": B, "seq": T, "steps": steps, "warmup": warmup,
                         "llm_overrides": {**gpu, "remat": remat}}, args.job_timeout)
            if r:
                print(json.dumps(r), flush=True)
                rows.append(r)
    peer_train, peer_score = [], []
    if not (args.cpu or args.no_peer):
        if not args.peer.exists():
            print(json.dumps({"peer": "missing", "path": str(args.peer)}), flush=True)
        else:
            peer_train, err = subprocess_rows([sys.executable, str(args.peer), "tinyllama-1.1b",
                                              *(["smollm2-135m"] if args.smollm2 else [])], 2 * args.job_timeout)
            peer_score, err2 = subprocess_rows([sys.executable, str(ROOT / "bench" / "peer_score.py"), str(args.peer),
                                                "tinyllama-1.1b", "128x256"], args.job_timeout)
            for q in peer_train + peer_score:
                print(json.dumps(q), flush=True)
            for e in (err, err2):
                if e:
                    print(e, file=sys.stderr)
    lines, verdicts = table(rows, peer_train, peer_score, ceiling, peak)
    print()
    print(f"matmul ceiling: {ceiling / 1e12:.3f} TFLOP/s ({mmrow['what']}); card's dense bf16 peak: "
          f"{f'{peak / 1e12:.0f} TFLOP/s' if peak else 'unknown'}" if ceiling else "matmul ceiling: not measured")
    print("\n".join(lines))
    if verdicts:
        print("\n".join(["", "Targets (bench/RESULTS.md):", *verdicts]))
    for packed in ([False] + [True] * args.epoch_packed) if args.epoch else []:
        e = epoch_measure(max(900, args.job_timeout), args.epoch_set + ["data.pack_train=true"] * packed)
        if e:
            print(f"- ML-1M epoch{' on shared-prefix packs (data.pack_train, 16 packs a step)' if packed else ''}: "
                  f"{e['epoch_s_steady']} s once compiled ({e['steps']} steps; {e['epoch_wall_s']} s "
                  f"wall with {e['compile_s']} s compiling {e['batch_shapes']} batch shapes) (target < 20 s): "
                  f"{'met' if e['epoch_s_steady'] < 20 else 'NOT met'}; {e['steady_samples_per_s']} samples/s, "
                  f"{e['steady_real_tokens_per_s'] or '-'} real tokens/s, padding {e['padding_share'] or '-'} of "
                  f"the token slots")
            print(f"- test evaluation: {e['test_eval_s']} s once compiled for {e['test_rows']} rows ({e['test_eval_wall_s']} s "
                  f"wall) (target < 1 s): {'met' if e['test_eval_s'] < 1 else 'NOT met'}")


if __name__ == "__main__":
    main()
