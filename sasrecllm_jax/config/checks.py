"""Checks of meaning that types cannot express, run on every config when it is read."""
from __future__ import annotations

from sasrecllm_jax.config.presets import llm_config
from sasrecllm_jax.config.schema import Config


def validate(cfg: Config, where: str) -> None:
    """Raise ConfigError naming the key and the fix for a value no run can use."""
    llm_config(cfg.model)  # the preset and its overrides, now rather than at compile time
