"""The LLM architectures by name, and the one function that turns `model.llm` + overrides into a LlamaConfig."""
from __future__ import annotations

import dataclasses

from sasrecllm_jax.config.typecheck import from_dict
from sasrecllm_jax.config.schema import LlamaConfig, ModelConfig
from sasrecllm_jax.errors import ConfigError

TINYLLAMA_1_1B = LlamaConfig()
SMOLLM2_135M = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                           num_heads=9, num_kv_heads=3, head_dim=64, rms_norm_eps=1e-5,
                           rope_theta=100000.0, max_position_embeddings=8192, tie_word_embeddings=True)
DEBUG_TINY = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                         num_kv_heads=2, head_dim=16, rope_theta=10000.0, max_position_embeddings=512)
LLAMA_PRESETS = {"TINYLLAMA_1_1B": TINYLLAMA_1_1B, "SMOLLM2_135M": SMOLLM2_135M, "DEBUG_TINY": DEBUG_TINY}


def llm_config(model: ModelConfig) -> LlamaConfig:
    """The preset `model.llm` with `model.llm_overrides` applied, checked."""
    if model.llm not in LLAMA_PRESETS:
        raise ConfigError(f"model.llm = {model.llm!r} is not a preset; choose one of {list(LLAMA_PRESETS)}")
    cfg = from_dict(LlamaConfig, {**dataclasses.asdict(LLAMA_PRESETS[model.llm]), **model.llm_overrides},
                    "model.llm_overrides")
    floats = ("float32", "bfloat16", "float16")
    for field in ("param_dtype", "dtype", "matmul_dtype"):
        value = getattr(cfg, field)
        if value not in floats and not (field == "matmul_dtype" and value is None):
            raise ConfigError(f"model.llm_overrides.{field} = {value!r}; use one of {list(floats)}"
                              + (" or null (the same as dtype)" if field == "matmul_dtype" else ""))
    if cfg.matmul_dtype not in (None, cfg.dtype) and cfg.dtype != "float32":
        raise ConfigError(f"model.llm_overrides.matmul_dtype = {cfg.matmul_dtype!r} with dtype {cfg.dtype!r}: it lowers "
                          f"the matmuls' operands below float32 activations; use dtype: float32, or matmul_dtype: null")
    if cfg.attention == "cudnn" and cfg.dtype == "float32":
        raise ConfigError("model.llm_overrides.attention = 'cudnn' takes bfloat16 or float16 activations; add "
                          "model.llm_overrides.dtype=bfloat16 (on a GPU, where cuDNN runs)")
    if cfg.scan_unroll < 1:
        raise ConfigError(f"model.llm_overrides.scan_unroll = {cfg.scan_unroll}; use 1 (a loop over layers) "
                          f"up to {cfg.num_layers} (every layer inlined)")
    return cfg
