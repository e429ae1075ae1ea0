"""Configuration: frozen dataclasses (schema), LLM presets, and loading from YAML and `--set` flags."""
from sasrecllm_jax.config.loading import apply_override, load_config, load_yaml, read_yaml
from sasrecllm_jax.config.presets import DEBUG_TINY, LLAMA_PRESETS, SMOLLM2_135M, TINYLLAMA_1_1B, llm_config
from sasrecllm_jax.config.schema import (Config, DataConfig, EvalConfig, LlamaConfig, LoraConfig, MapperConfig, MFConfig,
                                         ModelConfig, PhaseConfig, PopConfig, RopeScaling, SASRecConfig, TrainConfig)
from sasrecllm_jax.config.typecheck import from_dict, to_dict

__all__ = ["Config", "DataConfig", "EvalConfig", "LlamaConfig", "LoraConfig", "MapperConfig", "MFConfig", "ModelConfig",
           "PhaseConfig", "PopConfig", "RopeScaling", "SASRecConfig", "TrainConfig", "DEBUG_TINY", "LLAMA_PRESETS",
           "SMOLLM2_135M", "TINYLLAMA_1_1B", "apply_override", "from_dict", "llm_config", "load_config",
           "load_yaml", "read_yaml", "to_dict"]
