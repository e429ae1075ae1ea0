"""The inverse of convert.hf_to_params: the `llm` base params -> a Hugging Face Llama folder.

    config.json              a Llama config (config_to_hf)
    model.safetensors        float32 tensors named as in transformers ([out, in] linear weights,
                             one key per layer, no lm_head.weight when the head is tied)
    tokenizer.json           the `tokenizers.Tokenizer` the run used, saved as is
    tokenizer_config.json    enough for AutoTokenizer to wrap tokenizer.json (PreTrainedTokenizerFast)

`transformers.LlamaForCausalLM.from_pretrained(folder)` and `AutoTokenizer.from_pretrained(folder)`
load the folder offline, and `hf_folder.load_hf_folder(folder)` gives the same params back.
LoRA subtrees are not base weights: they are skipped here (peft_adapter exports them).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from sasrecllm_jax.config import LlamaConfig
from sasrecllm_jax.errors import WeightsError
from sasrecllm_jax.weights.convert import GLOBAL_KEYS, LAYER_KEYS, expected_shapes

WEIGHTS_FILE = "model.safetensors"


def _get(tree: dict, path: tuple, where: str):
    node = tree
    for i, p in enumerate(path):
        if not isinstance(node, dict) or p not in node:
            raise WeightsError(f"{where}: the llm params lack {'/'.join(path[:i + 1])}; pass the `llm` subtree of "
                               f"a model built from this LlamaConfig")
        node = node[p]
    return node


def params_to_hf(params: dict, cfg: LlamaConfig) -> dict[str, np.ndarray]:
    """The `llm` param subtree -> {HF key: float32 array}, every shape checked against cfg."""
    expected = expected_shapes(cfg)
    out: dict[str, np.ndarray] = {}
    for key, (path, transpose) in GLOBAL_KEYS.items():
        if key not in expected:  # lm_head.weight of a tied head
            continue
        x = np.asarray(_get(params, path, key), np.float32)
        out[key] = np.ascontiguousarray(x.T if transpose else x)
    layers = _get(params, ("model", "layers"), "model.layers")
    for suffix, (path, transpose) in LAYER_KEYS.items():
        stacked = np.asarray(_get(layers, path, f"model.layers.*.{suffix}"), np.float32)
        if stacked.shape[0] != cfg.num_layers:
            raise WeightsError(f"model.layers.*.{suffix}: {stacked.shape[0]} stacked layers, the config has "
                               f"{cfg.num_layers}")
        for i in range(cfg.num_layers):
            out[f"model.layers.{i}.{suffix}"] = np.ascontiguousarray(stacked[i].T if transpose else stacked[i])
    for key, shape in expected.items():
        if out[key].shape != shape:
            raise WeightsError(f"{key} has shape {out[key].shape}, the config implies {shape}; the params do not "
                               f"belong to this LlamaConfig")
    return out


def config_to_hf(cfg: LlamaConfig) -> dict:
    """LlamaConfig -> a transformers Llama config.json dict (read back by convert.config_from_hf).

    Runtime choices of this project (param_dtype, dtype, matmul_dtype, attention, remat, scan_unroll) are not part of it;
    the weights are written in float32. No bos/eos ids: they matter for generation, not for scoring."""
    hf = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim, "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_theta, "rope_scaling": None,
        "max_position_embeddings": cfg.max_position_embeddings, "tie_word_embeddings": cfg.tie_word_embeddings,
        "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False, "pretraining_tp": 1,
        "initializer_range": 0.02, "use_cache": True, "torch_dtype": "float32",
    }
    s = cfg.rope_scaling
    if s is not None:
        hf["rope_scaling"] = {"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                              "high_freq_factor": s.high_freq_factor,
                              "original_max_position_embeddings": s.original_max_position_embeddings}
    return hf


def tokenizer_config(max_length: int) -> dict:
    """A minimal tokenizer_config.json: AutoTokenizer wraps tokenizer.json as it is, so its own
    post-processor alone decides whether a BOS is added (as in this project's prompts)."""
    return {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length,
            "clean_up_tokenization_spaces": False}


def write_hf_folder(folder: str | Path, llm_cfg: LlamaConfig, base_params: dict, tokenizer,
                    metadata: dict | None = None) -> Path:
    """Write config.json, model.safetensors, tokenizer.json and tokenizer_config.json into folder."""
    folder = Path(folder)
    tensors = params_to_hf(base_params, llm_cfg)
    if tokenizer is not None and tokenizer.get_vocab_size(with_added_tokens=True) > llm_cfg.vocab_size:
        raise WeightsError(f"the tokenizer has {tokenizer.get_vocab_size(with_added_tokens=True)} tokens, the model's "
                           f"embedding {llm_cfg.vocab_size} rows; pass the tokenizer these weights were trained with")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config_to_hf(llm_cfg), indent=2) + "\n")
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt", **(metadata or {})})
    if tokenizer is not None:
        tokenizer.save(str(folder / "tokenizer.json"))
        (folder / "tokenizer_config.json").write_text(
            json.dumps(tokenizer_config(llm_cfg.max_position_embeddings), indent=2) + "\n")
    return folder
