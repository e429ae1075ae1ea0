"""The rename table: Hugging Face Llama keys <-> this project's Flax parameter paths.

Loading is a rename, a transpose of linear weights ([out, in] -> [in, out]) and a stack over layers;
every key must be used and every shape must match, or loading stops with the offending key.
"""
from __future__ import annotations

import re

import jax.numpy as jnp
import numpy as np

from sasrecllm_jax.config import LlamaConfig, RopeScaling
from sasrecllm_jax.errors import WeightsError
from sasrecllm_jax.trees import set_path

LAYER_KEYS = {  # HF suffix of model.layers.{i}. -> (path under llm/model/layers, transpose)
    "self_attn.q_proj.weight": (("self_attn", "q_proj", "kernel"), True),
    "self_attn.k_proj.weight": (("self_attn", "k_proj", "kernel"), True),
    "self_attn.v_proj.weight": (("self_attn", "v_proj", "kernel"), True),
    "self_attn.o_proj.weight": (("self_attn", "o_proj", "kernel"), True),
    "mlp.gate_proj.weight": (("mlp", "gate_proj", "kernel"), True),
    "mlp.up_proj.weight": (("mlp", "up_proj", "kernel"), True),
    "mlp.down_proj.weight": (("mlp", "down_proj", "kernel"), True),
    "input_layernorm.weight": (("input_layernorm", "weight"), False),
    "post_attention_layernorm.weight": (("post_attention_layernorm", "weight"), False),
}
GLOBAL_KEYS = {
    "model.embed_tokens.weight": (("model", "embed_tokens", "embedding"), False),
    "model.norm.weight": (("model", "norm", "weight"), False),
    "lm_head.weight": (("lm_head", "kernel"), True),
}
_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")


def expected_shapes(cfg: LlamaConfig) -> dict[str, tuple]:
    """HF key -> shape for every tensor a checkpoint of this config must hold."""
    d, f, h = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    per_layer = {
        "self_attn.q_proj.weight": (cfg.num_heads * h, d), "self_attn.k_proj.weight": (cfg.num_kv_heads * h, d),
        "self_attn.v_proj.weight": (cfg.num_kv_heads * h, d), "self_attn.o_proj.weight": (d, cfg.num_heads * h),
        "mlp.gate_proj.weight": (f, d), "mlp.up_proj.weight": (f, d), "mlp.down_proj.weight": (d, f),
        "input_layernorm.weight": (d,), "post_attention_layernorm.weight": (d,),
    }
    out = {f"model.layers.{i}.{k}": s for i in range(cfg.num_layers) for k, s in per_layer.items()}
    out["model.embed_tokens.weight"] = (cfg.vocab_size, d)
    out["model.norm.weight"] = (d,)
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = (cfg.vocab_size, d)
    return out


def hf_to_params(tensors: dict[str, np.ndarray], cfg: LlamaConfig, source: str) -> dict:
    """HF-named arrays -> the `llm` param subtree (no LoRA), in cfg.param_dtype."""
    expected = expected_shapes(cfg)
    extra = sorted(set(tensors) - set(expected) - {"lm_head.weight"} if cfg.tie_word_embeddings else set(tensors) - set(expected))
    extra = [k for k in extra if not k.endswith("rotary_emb.inv_freq")]
    missing = sorted(set(expected) - set(tensors))
    if missing or extra:
        raise WeightsError(f"{source}: checkpoint does not match the model config "
                           f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, unused {extra[:3]}"
                           f"{'...' if len(extra) > 3 else ''}); check that config.json belongs to these weights")
    dtype = jnp.dtype(cfg.param_dtype)
    for k, shape in expected.items():
        if tuple(tensors[k].shape) != shape:
            raise WeightsError(f"{source}: {k} has shape {tuple(tensors[k].shape)}, the config implies {shape}")
    params: dict = {"model": {"layers": {}}}
    layered: dict[tuple, list] = {}
    for k in expected:
        m = _LAYER.fullmatch(k)
        if m:
            path, transpose = LAYER_KEYS[m.group(2)]
            layered.setdefault(path, [None] * cfg.num_layers)[int(m.group(1))] = _prep(tensors[k], transpose)
        else:
            path, transpose = GLOBAL_KEYS[k]
            set_path(params, path, jnp.asarray(_prep(tensors[k], transpose), dtype))
    for path, arrays in layered.items():
        set_path(params["model"]["layers"], path, jnp.asarray(np.stack(arrays), dtype))
    return params


def _prep(x, transpose):
    x = np.asarray(x, dtype=np.float32) if x.dtype != np.float32 else np.asarray(x)
    return x.T if transpose else x


def config_from_hf(hf: dict, **overrides) -> LlamaConfig:
    """A Hugging Face Llama config.json dict -> LlamaConfig (rope_theta top level or in rope_parameters)."""
    if hf.get("model_type", "llama") != "llama":
        raise WeightsError(f"model_type {hf.get('model_type')!r}: only Llama-architecture checkpoints load")
    rope = dict(hf.get("rope_parameters") or {})
    scaling = hf.get("rope_scaling") or (rope if rope.get("rope_type") == "llama3" else None)
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    if scaling and scaling.get("rope_type", scaling.get("type")) not in ("llama3", "default", None):
        raise WeightsError(f"rope scaling {scaling.get('rope_type')!r} is not supported (llama3 only)")
    heads = hf["num_attention_heads"]
    return LlamaConfig(
        vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"], num_heads=heads, num_kv_heads=hf.get("num_key_value_heads", heads),
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads, rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=float(theta),
        rope_scaling=RopeScaling(scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"],
                                 scaling["original_max_position_embeddings"])
        if scaling and scaling.get("rope_type", scaling.get("type")) == "llama3" else None,
        max_position_embeddings=hf.get("max_position_embeddings", 2048),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)), **overrides)
