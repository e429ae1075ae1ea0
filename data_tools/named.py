"""Named datasets that prepare themselves on first use (registered as entry points of
`sasrecllm_jax.datasets` in pyproject.toml)."""
from __future__ import annotations

from pathlib import Path

from data_tools import collm, movielens
from sasrecllm_jax.errors import DataError

SHARED_ML1M = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-1m-collm" / "ml-1m.zip"


def prepare_named(name: str):
    """(splits, items, source, recipe) of a named dataset."""
    if name == "ml100k":
        return movielens.prepare_ml100k(None, 0.1, 0.1)
    if name == "ml1m-collm" and SHARED_ML1M.exists():
        return collm.prepare_collm(SHARED_ML1M, trust_pickle=True)  # the project's own shared copy
    raise DataError(f"{name}: no source to prepare it from here; run `python -m data_tools prepare {name} ...`")
