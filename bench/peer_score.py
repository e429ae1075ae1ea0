"""The peer's scoring: its own model (HF transformers, bf16, SDPA, random weights) forward-only under
torch.no_grad, Yes/No logits at the last position (logits_to_keep=1), as the peer's train step feeds it.

    python bench/peer_score.py PATH/hf_peft_lora_bench.py tinyllama-1.1b 128x256

Prints one JSON line. The peer script has no scoring mode; this borrows its model table so both sides
score the same architecture. The LoRA adapters are left out: merged, they cost nothing at inference.
"""
import importlib.util
import json
import statistics
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main(peer_path: str, name: str, shape: str, steps: int = 20, warmup: int = 5):
    spec = importlib.util.spec_from_file_location("peer", peer_path)
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    h, L, nh, nkv, inter, vocab = peer.CONFIGS[name]
    batch, seq = map(int, shape.split("x"))
    cfg = LlamaConfig(hidden_size=h, num_hidden_layers=L, num_attention_heads=nh, num_key_value_heads=nkv,
                      intermediate_size=inter, vocab_size=vocab, max_position_embeddings=2048, rope_theta=10000.0,
                      tie_word_embeddings=(name == "smollm2-135m"))
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(dtype=torch.bfloat16, device="cuda").eval()
    emb = model.get_input_embeddings()
    yes_no = torch.tensor([3869, 1939], device="cuda")
    ids = torch.randint(0, vocab, (batch, seq), device="cuda")
    mask = torch.ones_like(ids)

    @torch.no_grad()
    def score():
        out = model(inputs_embeds=emb(ids), attention_mask=mask, logits_to_keep=1)
        logits = out.logits[:, -1, :].float()[:, yes_no]
        return logits[:, 0] - logits[:, 1]

    torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        score()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        score()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(json.dumps({"peer": "transformers forward", "model": name, "batch": batch, "seq": seq, "attn": "sdpa",
                      "step_ms_median": round(med * 1e3, 2), "samples_per_s": round(batch / med, 1),
                      "tokens_per_s": round(batch * seq / med),
                      "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
