"""For real users: a Hugging Face hub model (e.g. TinyLlama) into a local folder that hf_folder reads."""
from __future__ import annotations

from pathlib import Path

from sasrecllm_jax.downloads import cache_dir
from sasrecllm_jax.errors import WeightsError

TINYLLAMA = "TinyLlama/TinyLlama-1.1B-Chat-v1.0"


def download(repo_id: str = TINYLLAMA, out: str | Path | None = None) -> Path:
    """Fetch config.json, tokenizer files and *.safetensors into `out` (default: the cache)."""
    out = Path(out) if out else cache_dir() / "hf" / repo_id.replace("/", "--")
    try:
        from huggingface_hub import snapshot_download
        snapshot_download(repo_id, local_dir=str(out),
                          allow_patterns=["config.json", "*.safetensors", "tokenizer.json", "tokenizer_config.json"])
    except Exception as e:  # offline, unknown repo, gated model...
        raise WeightsError(f"cannot download {repo_id} from the Hugging Face hub ({type(e).__name__}: {e}). "
                           f"Offline? Download the folder on a connected machine (config.json, *.safetensors, "
                           f"tokenizer.json), copy it here and set model.weights to that folder") from None
    return out
