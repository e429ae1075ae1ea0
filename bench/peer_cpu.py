"""The peer on a CPU: HF transformers + PEFT (PyTorch), its LoRA train step and forward-only scoring.

    python bench/peer_cpu.py train 16x128              # one JSON line: the peer's train step
    python bench/peer_cpu.py score 16x128 --compile    # forward-only scoring under torch.compile
    python bench/peer_cpu.py --serve '{"kind": "train", "batch": 16, "seq": 128, "compile": false}'

The same step as the GPU peer (hf_peft_lora_bench.py, which hardcodes CUDA), on the
CPU in fp32 (or `--dtype bfloat16`): a LlamaForCausalLM with SmolLM2-135M's architecture (random weights, tied embeddings,
SDPA attention), PEFT LoRA r=8 / alpha 16 / dropout 0.05 on q_proj, v_proj, prompts fed as
inputs_embeds, BCE on two vocab ids' logits at the last position (`logits_to_keep=1`: no logits at
other positions), AdamW on the LoRA parameters. Scoring: the model forward-only under
torch.inference_mode, the same two logits at the last position; the LoRA adapters are left out
(merged, they cost nothing at inference). torch.set_num_threads(--threads, default: all cores).
`--compile` wraps the forward (and through AOTAutograd its backward) in torch.compile (inductor).

`--serve` is bench.py's interleaved mode: set up (and compile) once, print a "ready" line, then
time one step per "step" line read from stdin and print its seconds; "quit" ends it.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

PEER = Path(__file__).resolve().parents[2] / "shared" / "peers" / "hf_peft_lora_bench.py"
# name: (hidden, layers, heads, kv_heads, intermediate, vocab), as in the peer's CONFIGS
CONFIGS = {"smollm2-135m": (576, 30, 9, 3, 1536, 49152), "tinyllama-1.1b": (2048, 22, 32, 4, 5632, 32000)}


def peer_configs() -> dict:
    """The peer script's model table when it is there (the same architectures by construction), else ours."""
    if not PEER.exists():
        return CONFIGS
    spec = importlib.util.spec_from_file_location("peer", PEER)
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)  # defines only; its main() runs under __main__
    return peer.CONFIGS


def build(job: dict):
    """(one_step, settings): one_step() runs one train step or one scoring forward."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.set_num_threads(job.get("threads") or os.cpu_count())
    name, B, T = job.get("model", "smollm2-135m"), job["batch"], job["seq"]
    h, L, nh, nkv, inter, vocab = peer_configs()[name]
    cfg = LlamaConfig(hidden_size=h, num_hidden_layers=L, num_attention_heads=nh, num_key_value_heads=nkv,
                      intermediate_size=inter, vocab_size=vocab, max_position_embeddings=2048, rope_theta=10000.0,
                      tie_word_embeddings=(name == "smollm2-135m"))
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    dtype = job.get("dtype", "float32")
    model = LlamaForCausalLM(cfg).to(dtype=getattr(torch, dtype))
    emb = model.get_input_embeddings()
    yes_no = torch.tensor([3869, 1939])
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, vocab, (B, T), generator=gen), torch.randint(0, 2, (B,), generator=gen).float())
               for _ in range(4)]
    settings = {"threads": torch.get_num_threads(), "attn": "sdpa", "dtype": dtype, "logits_to_keep": 1,
                "compile": bool(job.get("compile"))}
    if job["kind"] == "score":
        model.eval()

        def forward(ids):
            out = model(inputs_embeds=emb(ids), attention_mask=torch.ones_like(ids), logits_to_keep=1)
            logits = out.logits[:, -1, :].float()[:, yes_no]
            return logits[:, 0] - logits[:, 1]
        fwd = torch.compile(forward) if job.get("compile") else forward
        i = [0]

        def one():
            with torch.inference_mode():
                i[0] += 1
                return fwd(batches[i[0] % 4][0])
        return one, settings
    from peft import LoraConfig, get_peft_model
    lcfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"], bias="none",
                      task_type="CAUSAL_LM")
    model = get_peft_model(model, lcfg)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    settings["optimizer"] = "AdamW (torch default: foreach)"

    def loss_fn(ids, labels):
        x = emb(ids)  # frozen embedding: no gradient reaches it
        out = model(inputs_embeds=x, attention_mask=torch.ones_like(ids), logits_to_keep=1)
        logits = out.logits[:, -1, :].float()[:, yes_no]
        return F.binary_cross_entropy_with_logits(logits[:, 0] - logits[:, 1], labels)
    loss_c = torch.compile(loss_fn) if job.get("compile") else loss_fn
    i = [0]

    def one():
        i[0] += 1
        loss = loss_c(*batches[i[0] % 4])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()
    return one, settings


def flops_per_token(name: str, seq: int, train: bool) -> float:
    """The peer's formula (4 x non-embedding matmul params + attention per token; half for scoring)."""
    h, L, nh, nkv, inter, vocab = peer_configs()[name]
    hd = h // nh
    n = L * (h * h * 2 + h * nkv * hd * 2 + 3 * h * inter)
    per = 4 * n + 12 * L * seq * h
    return per if train else per / 2


def setup(job: dict):
    t0 = time.perf_counter()
    one, settings = build(job)
    one()  # the first call compiles under --compile
    return one, {**settings, "setup_s": round(time.perf_counter() - t0, 1)}


def serve(job: dict):
    one, info = setup(job)
    print(json.dumps({"ready": True, **info}), flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        t0 = time.perf_counter()
        one()
        print(json.dumps({"t": time.perf_counter() - t0}), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", nargs="?", choices=["train", "score"])
    p.add_argument("shape", nargs="?", default="16x128")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--dtype", default="float32", help="the model's weights and activations (bfloat16: PEFT keeps "
                   "the adapters in float32)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.serve:
        return serve(json.loads(a.serve))
    B, T = map(int, a.shape.split("x"))
    job = {"kind": a.kind, "model": a.model, "batch": B, "seq": T, "compile": a.compile, "threads": a.threads,
           "dtype": a.dtype}
    one, info = setup(job)
    for _ in range(a.warmup):
        one()
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        one()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(json.dumps({"peer": "transformers+peft" if a.kind == "train" else "transformers forward", **job, **info,
                      "step_ms_median": round(med * 1e3, 1), "samples_per_s": round(B / med, 2),
                      "tokens_per_s": round(B * T / med),
                      "flops_per_s": flops_per_token(a.model, T, a.kind == "train") * B * T / med}), flush=True)


if __name__ == "__main__":
    main()
