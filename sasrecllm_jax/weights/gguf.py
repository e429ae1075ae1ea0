"""A GGUF file (llama.cpp) -> (LlamaConfig, llm params): dequantized, q/k un-permuted, HF-named.

Parsing a GGUF's metadata and dequantizing its tensors takes seconds (about 5 s for SmolLM2-135M on two
cores), on every process that loads it: `read_gguf_cached` keeps the result as a float32 safetensors
file in the download cache ($SASRECLLM_CACHE/models/dequantized, about 4 bytes per weight: 540 MB for
SmolLM2-135M), keyed by the GGUF's path, size and modification time, so later processes read it in
a fraction of a second. One copy per GGUF file; none for models over 4 GiB in float32;
`SASRECLLM_WEIGHTS_CACHE=off` turns it off.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import importlib.metadata
import json
import os
import sys
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from sasrecllm_jax import downloads
from sasrecllm_jax.config import LlamaConfig
from sasrecllm_jax.config.typecheck import from_dict
from sasrecllm_jax.errors import WeightsError
from sasrecllm_jax.weights.convert import hf_to_params

NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
         "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
         "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        if default is None:
            raise WeightsError(f"GGUF metadata lacks {key}")
        return default
    v = f.parts[f.data[0]]
    if v.dtype == np.uint8:
        return v.tobytes().decode()
    if v.dtype == np.float32:  # shortest decimal of the float32 (1e-05, not 9.9999997e-06)
        return float(str(v.item() if v.ndim == 0 else np.float32(v[0])))
    return v.item()


def unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's interleaved-rotary permutation of q/k rows (back to HF's rotate_half layout)."""
    out, inp = w.shape
    return w.reshape(n_heads, out // n_heads // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def read_gguf(path: str | Path):
    """(LlamaConfig, HF-named float32 tensors) from a GGUF file."""
    import gguf
    path = Path(path)
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:
        raise WeightsError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise WeightsError(f"{path}: architecture {arch!r}; only llama GGUF files load")
    p = f"{arch}."
    heads = int(_field(reader, p + "attention.head_count"))
    kv = int(_field(reader, p + "attention.head_count_kv", heads))
    hidden = int(_field(reader, p + "embedding_length"))
    names = [t.name for t in reader.tensors]
    vocab = next(t for t in reader.tensors if t.name == "token_embd.weight").shape[-1]
    cfg = LlamaConfig(vocab_size=int(vocab), hidden_size=hidden,
                      intermediate_size=int(_field(reader, p + "feed_forward_length")),
                      num_layers=int(_field(reader, p + "block_count")), num_heads=heads, num_kv_heads=kv,
                      head_dim=int(_field(reader, p + "attention.key_length", hidden // heads)),
                      rms_norm_eps=float(_field(reader, p + "attention.layer_norm_rms_epsilon")),
                      rope_theta=float(_field(reader, p + "rope.freq_base", 10000.0)),
                      max_position_embeddings=int(_field(reader, p + "context_length", 2048)),
                      tie_word_embeddings="output.weight" not in names)
    tensors = {}
    for t in reader.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape([int(s) for s in reversed(t.shape)]) if w.ndim != len(t.shape) else w
        parts = t.name.split(".")
        if t.name == "token_embd.weight":
            key = "model.embed_tokens.weight"
        elif t.name == "output_norm.weight":
            key = "model.norm.weight"
        elif t.name == "output.weight":
            key = "lm_head.weight"
        elif parts[0] == "blk" and parts[2] in NAMES:
            key = f"model.layers.{parts[1]}.{NAMES[parts[2]]}.weight"
            if parts[2] == "attn_q":
                w = unpermute(w, heads)
            elif parts[2] == "attn_k":
                w = unpermute(w, kv)
        else:
            raise WeightsError(f"{path}: tensor {t.name} has no Hugging Face counterpart here")
        tensors[key] = w
    return cfg, tensors, reader


MAX_COPY_BYTES = 4 * 2**30  # larger models are parsed each time: writing the copy would double peak memory


def _copy_name(path: Path) -> str:
    """The copies of the GGUF at `path` are named FILE-PATHDIGEST.KEY.safetensors: this is FILE-PATHDIGEST."""
    return f"{path.stem}-{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]}"


def dequantized_path(path: Path) -> Path:
    """Where read_gguf_cached keeps the dequantized copy of the GGUF at `path`, keyed by the file's size and
    modification time, this module's source and the gguf package's version (a change to the conversion
    never serves an old copy)."""
    try:
        gguf_version = importlib.metadata.version("gguf")
    except importlib.metadata.PackageNotFoundError:  # (read_gguf says what to install)
        gguf_version = ""
    st = path.stat()
    key = hashlib.sha256(repr((st.st_size, st.st_mtime_ns, Path(__file__).read_bytes(),
                               gguf_version)).encode()).hexdigest()[:12]
    return downloads.cache_dir() / "models" / "dequantized" / f"{_copy_name(path)}.{key}.safetensors"


def read_gguf_cached(path: str | Path) -> tuple[LlamaConfig, dict]:
    """read_gguf's (config, tensors), from the dequantized copy when there is one, else from the GGUF
    (then written as that copy, replacing older copies of the same file)."""
    path = Path(path)
    if os.environ.get("SASRECLLM_WEIGHTS_CACHE", "on").strip().lower() in downloads.OFF:
        return read_gguf(path)[:2]
    try:
        cached = dequantized_path(path)
    except OSError as e:  # no cache folder can be made (a read-only home): parse the file each time
        print(f"no download cache for the dequantized weights ({e}); parsing {path}", file=sys.stderr)
        return read_gguf(path)[:2]
    if cached.exists():
        try:
            with safe_open(str(cached), "np") as f:
                cfg = from_dict(LlamaConfig, json.loads(f.metadata()["llama_config"]), "llama_config")
                return cfg, {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # a damaged or foreign copy: read the GGUF again and rewrite it
            print(f"{cached}: unreadable ({type(e).__name__}); reading {path} again", file=sys.stderr)
    cfg, tensors, _ = read_gguf(path)
    if sum(t.nbytes for t in tensors.values()) > MAX_COPY_BYTES:
        return cfg, tensors
    tmp = cached.with_name(f"{cached.name}.{os.getpid()}.partial")  # one per process: two writers never share it
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(tmp), metadata={"llama_config": json.dumps(dataclasses.asdict(cfg))})
        os.replace(tmp, cached)
        for old in cached.parent.glob(glob.escape(_copy_name(path)) + ".*.safetensors"):
            if old != cached:
                old.unlink(missing_ok=True)
    except OSError as e:  # a full or read-only cache: the weights are read, only the copy is lost
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        print(f"could not keep the dequantized weights at {cached} ({e}); the next run parses the GGUF "
              f"again", file=sys.stderr)
    return cfg, tensors


def load_gguf(path: str | Path, **config_overrides):
    cfg, tensors, _ = read_gguf(path)
    cfg = dataclasses.replace(cfg, **config_overrides)
    return cfg, hf_to_params(tensors, cfg, str(path))
