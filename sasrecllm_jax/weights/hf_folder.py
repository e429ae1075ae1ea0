"""A local Hugging Face folder (config.json + *.safetensors) -> (LlamaConfig, llm params)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from safetensors import safe_open

from sasrecllm_jax.errors import WeightsError
from sasrecllm_jax.weights.convert import config_from_hf, hf_to_params


def load_hf_folder(folder: str | Path, **config_overrides):
    cfg, tensors = read_hf_folder(folder)
    cfg = dataclasses.replace(cfg, **config_overrides)
    return cfg, hf_to_params(tensors, cfg, str(folder))


def read_hf_folder(folder: str | Path):
    """(LlamaConfig, HF-named float32 host tensors) from a Hugging Face folder."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        raise WeightsError(f"{folder}: no config.json; pass a folder written by save_pretrained "
                           f"(or fetched with `python -m data_tools fetch-hf`)")
    cfg = config_from_hf(json.loads(cfg_path.read_text()))
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise WeightsError(f"{folder}: no *.safetensors files (PyTorch .bin checkpoints are not read: "
                           f"convert them with save_pretrained(safe_serialization=True))")
    tensors: dict[str, np.ndarray] = {}
    for f in files:
        try:
            with safe_open(f, framework="flax") as st:
                for k in st.keys():
                    if k in tensors:
                        raise WeightsError(f"{f}: tensor {k} appears in two files")
                    tensors[k] = np.asarray(st.get_tensor(k), dtype=np.float32)
        except WeightsError:
            raise
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise WeightsError(f"{f}: cannot be read ({type(e).__name__}: {e}); the file is damaged") from None
    return cfg, tensors
