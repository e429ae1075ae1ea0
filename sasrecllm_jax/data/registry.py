"""Datasets by name: `data.dataset` is a prepared folder, or a name prepared once under `data.data_dir`.

Named datasets are provided by the data preparation tools as entry points of the group
`sasrecllm_jax.datasets` (declared in pyproject.toml): each is a function `prepare(name)` returning
`(splits, items, source, recipe)` or `(splits, items, source, recipe, card_extra)`. `register`
adds one in code (tests, notebooks).
"""
from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Callable

from sasrecllm_jax.config import DataConfig
from sasrecllm_jax.data.dataset import Dataset, load_dataset, write_dataset
from sasrecllm_jax.errors import DataError

ENTRY_POINTS = "sasrecllm_jax.datasets"
_registered: dict[str, Callable] = {}


def register(name: str, prepare: Callable) -> None:
    """Make `name` a dataset that prepares itself with `prepare(name)` on first use."""
    _registered[name] = prepare


def preparers() -> dict[str, Callable]:
    """Every named dataset: the registered ones and the installed entry points (loaded on use)."""
    found = {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINTS)}
    return {**{name: (lambda ep=ep: ep.load()) for name, ep in found.items()},
            **{name: (lambda fn=fn: fn) for name, fn in _registered.items()}}


def resolve_dataset(cfg: DataConfig) -> Dataset:
    """The dataset a config names: a prepared folder, or a named dataset (prepared now if it is not yet)."""
    path = Path(cfg.dataset)
    if (path / "dataset.json").exists():
        return load_dataset(path)
    out = Path(cfg.data_dir) / cfg.dataset
    if (out / "dataset.json").exists():
        return load_dataset(out)
    known = preparers()
    if cfg.dataset not in known:
        names = ", ".join(sorted(known)) or "none installed: pip install -e . registers them"
        raise DataError(f"data.dataset = {cfg.dataset!r} is neither a prepared folder nor a named dataset "
                        f"({names}); prepare it with `python -m data_tools prepare ...` and point data.dataset "
                        f"at the folder")
    built = known[cfg.dataset]()(cfg.dataset)
    splits, items, source, recipe, *extra = built
    print(f"preparing {cfg.dataset} into {out} ...")
    write_dataset(out, splits, items, source=source, recipe=recipe, extra=extra[0] if extra else None)
    return load_dataset(out)
