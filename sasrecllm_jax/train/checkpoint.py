"""Orbax checkpoints of what trains: never the LLM base, which always comes from its source file.

WORKDIR/checkpoints/PHASE/latest   train state (trainable params, optimizer state, step, key) + meta
                                    (data-iterator position, early-stopping bookkeeping)
WORKDIR/checkpoints/PHASE/best     every non-frozen group (sasrec | mf, mapper, lora) at the best eval
WORKDIR/final                      the same for the run's final model (what other runs restore from)

Orbax writes each step into a temporary folder and renames it, so a killed save leaves the previous
checkpoint intact. A checkpoint is checked against the model (groups, paths, shapes) before it is
restored; a mismatch or a damaged file is refused with a message, never loaded loosely.
"""
from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from sasrecllm_jax.errors import CheckpointError
from sasrecllm_jax.train import groups


def _shapes(tree) -> dict[str, list[int]]:
    return {jax.tree_util.keystr(p): list(np.shape(x)) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _abstract(tree):
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


class Store:
    """One Orbax CheckpointManager keeping the newest `keep` steps of named trees plus JSON meta."""

    def __init__(self, directory: Path, keep: int = 1):
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, items: dict[str, object], meta: dict) -> None:
        meta = {**meta, "shapes": {name: _shapes(tree) for name, tree in items.items()}}
        args = {name: ocp.args.StandardSave(tree) for name, tree in items.items()}
        self.manager.save(step, args=ocp.args.Composite(meta=ocp.args.JsonSave(meta), **args), force=True)
        self.manager.wait_until_finished()

    def meta(self, step: int | None = None) -> dict:
        step = self.latest_step() if step is None else step
        try:
            return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:
            raise CheckpointError(f"{self.directory}/{step}: metadata cannot be read ({type(e).__name__}: {e}); "
                                  f"the checkpoint is damaged: delete it or restore from another") from None

    def restore(self, like: dict[str, object], step: int | None = None) -> tuple[dict, dict]:
        """Restore the named trees in `like` (structure, shapes, dtypes) after checking them."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"{self.directory}: no checkpoint to restore")
        meta = self.meta(step)
        saved = meta.get("shapes", {})
        for name, tree in like.items():
            if name not in saved:
                raise CheckpointError(f"{self.directory}/{step} holds no '{name}' (it holds {sorted(saved)}); "
                                      f"restore that group from a run that trained it")
            want, have = _shapes(tree), saved[name]
            if want != have:
                missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
                wrong = [k for k in sorted(set(want) & set(have)) if want[k] != have[k]]
                detail = (f"missing {missing[:3]} " if missing else "") + (f"unexpected {extra[:3]} " if extra else "") + \
                         (f"shape of {wrong[0]}: checkpoint {have[wrong[0]]}, model {want[wrong[0]]}" if wrong else "")
                raise CheckpointError(f"{self.directory}/{step}: '{name}' does not match this model ({detail.strip()}); "
                                      f"it was written by a run with another model config")
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                **{name: ocp.args.StandardRestore(_abstract(tree)) for name, tree in like.items()}))
        except Exception as e:
            raise CheckpointError(f"{self.directory}/{step}: cannot be restored ({type(e).__name__}: "
                                  f"{str(e)[:300]}); the checkpoint is damaged: delete it and resume from the "
                                  f"previous one or start again") from None
        return {name: out[name] for name in like}, meta


def load_raw(directory: str | Path) -> dict[str, object]:
    """Every named tree of the newest step in a Store folder, as saved (no model needed)."""
    store = Store(directory)
    step = store.latest_step()
    if step is None:
        raise CheckpointError(f"{directory}: no checkpoint")
    names = [n for n in store.meta(step)["shapes"]]
    checkpointer = ocp.StandardCheckpointer()
    return {n: checkpointer.restore(store.directory / str(step) / n) for n in names}


class PhaseCheckpoints:
    """A phase's two checkpoints: `latest` (the whole train state, the data-iterator position and the
    early-stopping record, at every evaluation: what a resume continues from) and `best` (the trained
    groups at the best evaluation: what the phase hands on)."""

    def __init__(self, workdir: Path, phase: str):
        self.phase = phase
        self.latest = Store(Path(workdir) / "checkpoints" / phase / "latest")
        self.best = Store(Path(workdir) / "checkpoints" / phase / "best")

    def save_latest(self, step: int, state: dict, iterator: dict, stopping: dict) -> None:
        self.latest.save(step, {"state": state}, {"iterator": iterator, "book": stopping})

    def save_best(self, step: int, group_trees: dict, auc: float) -> None:
        self.best.save(step, group_trees, {"auc": auc, "phase": self.phase})

    def restore_best_into(self, params: dict) -> dict:
        """params with every group the best checkpoint holds replaced by its values (unchanged without one)."""
        if self.best.latest_step() is None:
            return params
        restored, _ = self.best.restore(groups.group_trees(params))
        return groups.replace_groups(params, restored)
