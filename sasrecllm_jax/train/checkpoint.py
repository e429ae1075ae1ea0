"""Orbax checkpoints of what trains: never the LLM base, which always comes from its source file.
(Over 300 lines: the stores, their verification and the phase's fallbacks between them are one
contract, read and tested together.)

WORKDIR/checkpoints/PHASE/latest   train state (trainable params, optimizer state, step, key) + meta
                                    (data-iterator position, early-stopping bookkeeping, time spent), at
                                    the phase's two newest evaluations
WORKDIR/checkpoints/PHASE/best     every non-frozen group (sasrec | mf, mapper, lora) at the phase's two
                                    newest best evaluations (the newer is the phase's best)
WORKDIR/final                      the same for the run's final model (what other runs restore from)

Orbax writes each step into a temporary folder and renames it, so a killed save leaves the previous
checkpoint intact. Every checkpoint carries a sha256 digest of each array and of its metadata, written
at save and checked at restore, and holds finite values only (a save of a NaN is refused). A checkpoint
is checked against the model (groups, paths, shapes) before it is restored; a mismatch is refused with a
message (CheckpointError), a failed check too (DamagedCheckpointError), never loaded loosely. Where a
damaged checkpoint has a stand-in that verifies, `PhaseCheckpoints` uses it and says so:

    resuming a phase   the older latest step (the whole train state: the resume stays exact), else the
                       phase starts again from its first step; never the best checkpoint, which holds no
                       optimizer state or data position
    a phase's best     the latest checkpoint of the same step (its trained groups are the same arrays)
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from collections import Counter
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from sasrecllm_jax.errors import CheckpointError, DamagedCheckpointError
from sasrecllm_jax.train import groups


def _shapes(tree) -> dict[str, list[int]]:
    return {jax.tree_util.keystr(p): list(np.shape(x)) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _abstract(tree, dtypes: dict[str, str] | None = None):
    """Shapes and dtypes to restore `tree` as: the saved dtypes where known (so a digest sees the bytes
    as written), the tree's own otherwise."""
    def leaf(path, x):
        dtype = (dtypes or {}).get(jax.tree_util.keystr(path), x.dtype)
        return jax.ShapeDtypeStruct(np.shape(x), np.dtype(dtype))
    return jax.tree_util.tree_map_with_path(leaf, tree)


def _digest(x: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and bytes, prefixed by its dtype name (what _abstract reads)."""
    x = np.ascontiguousarray(x)
    h = hashlib.sha256(f"{x.dtype.str}{x.shape}".encode())
    h.update(x.tobytes())
    return f"{x.dtype.name}:{h.hexdigest()}"


def array_digests(tree) -> dict[str, str]:
    """{path: digest} of every array of a tree (on the host)."""
    return {jax.tree_util.keystr(p): _digest(np.asarray(x))
            for p, x in jax.tree_util.tree_leaves_with_path(jax.device_get(tree))}


def nonfinite_leaves(tree) -> list[str]:
    """The paths of floating-point arrays that hold a NaN or an infinity (device arrays are checked where
    they are, sharded or not)."""
    bad = []
    for p, x in jax.tree_util.tree_leaves_with_path(tree):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            continue
        finite = bool(jnp.isfinite(x).all()) if isinstance(x, jax.Array) else bool(np.isfinite(np.asarray(x)).all())
        if not finite:
            bad.append(jax.tree_util.keystr(p))
    return bad


def _meta_digest(meta: dict) -> str:
    return hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "digests"}, sort_keys=True).encode()
                          ).hexdigest()


def _os_error(e: Exception, where: Path) -> OSError | None:
    """The operating-system error inside an Orbax / TensorStore failure (disk full, not writable...)."""
    if isinstance(e, OSError):
        return OSError(e.errno, e.strerror, e.filename or str(where))
    code = re.search(r"os_error_code='?(\d+)", str(e))
    if code:
        return OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(where))
    return None


@contextlib.contextmanager
def _quiet_orbax():
    """Orbax logs a failed write with a traceback per thread; the error itself is raised as one line."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


class Store:
    """One Orbax CheckpointManager keeping the newest `keep` steps of named trees plus JSON meta. A
    `writer` (the process holding the run's lock) also removes the temporary folders of saves that a
    kill or a full disk cut short."""

    def __init__(self, directory: Path, keep: int = 1, writer: bool = False):
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, cleanup_tmp_directories=writer, enable_async_checkpointing=False))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def where(self, step: int) -> str:
        return f"{self.directory}/{step}"

    # ------------------------------------------------------------------ writing
    def save(self, step: int, items: dict[str, object], meta: dict) -> None:
        """Save `items` at `step` with their digests; a step already saved is kept when it holds the same
        arrays and verifies, replaced otherwise (a step a resumed run redoes). Arrays spread over several
        hosts (train.distributed) are saved without digests: no host holds them whole."""
        bad = [f"{name}{p}" for name, tree in items.items() for p in nonfinite_leaves(tree)]
        if bad:
            raise CheckpointError(f"{self.where(step)}: not saved: {bad[0]} holds NaN or infinite values")
        meta = {**meta, "shapes": {name: _shapes(tree) for name, tree in items.items()}}
        if jax.process_count() == 1:
            meta["digests"] = {"arrays": {name: array_digests(tree) for name, tree in items.items()},
                               "meta": _meta_digest(meta)}
            if step in self.steps() and self._holds(step, meta["digests"]):
                return
        if step in self.steps():
            self.manager.delete(step)
        args = {name: ocp.args.StandardSave(tree) for name, tree in items.items()}
        try:
            with _quiet_orbax():
                self.manager.save(step, args=ocp.args.Composite(meta=ocp.args.JsonSave(meta), **args), force=True)
                self.manager.wait_until_finished()
        except Exception as e:
            os_error = _os_error(e, self.directory)
            if os_error is not None:
                raise os_error from None
            raise

    def _holds(self, step: int, digests: dict) -> bool:
        """Whether `step` already holds exactly these digests and verifies."""
        try:
            return self._read_meta(step).get("digests") == digests and self.check(step) is None
        except CheckpointError:
            return False

    def delete(self, step: int) -> None:
        self.manager.delete(step)

    def close(self) -> None:
        """Wait for Orbax's work on this folder and stop its threads."""
        self.manager.close()

    # ------------------------------------------------------------------ reading
    def _read_meta(self, step: int) -> dict:
        try:
            return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:
            raise DamagedCheckpointError(f"{self.where(step)} is damaged: its metadata cannot be read ({type(e).__name__}: "
                                         f"{str(e)[:200]})") from None

    def meta(self, step: int | None = None) -> dict:
        """The JSON meta of a step (the newest by default), checked against its digest."""
        step = self.latest_step() if step is None else step
        meta = self._read_meta(step)
        digests = meta.get("digests")
        if digests is not None and digests.get("meta") != _meta_digest(meta):
            raise DamagedCheckpointError(f"{self.where(step)} is damaged: its metadata does not match its digest")
        return meta

    def _verify(self, step: int, name: str, tree, meta: dict, by_path: bool = True) -> None:
        """Raise DamagedCheckpointError if a restored tree differs from its digests or holds non-finite values
        (checkpoints written before digests existed are checked for finite values only). A tree restored
        without a model (`by_path` False) has containers of its own (optimizer states come back as plain
        dicts), so its digests are compared as a collection."""
        saved = meta.get("digests", {}).get("arrays", {}).get(name)
        if saved is not None:
            now = array_digests(tree)
            if by_path:
                wrong = [p for p in saved if now.get(p) != saved[p]]
            else:
                extra = Counter(now.values()) - Counter(saved.values())
                wrong = [p for p, d in now.items() if d in extra] or (["(an array)"] if len(now) != len(saved) else [])
            if wrong:
                raise DamagedCheckpointError(f"{self.where(step)} is damaged: array {name}{wrong[0]} differs from the digest "
                                             f"written with it")
        bad = nonfinite_leaves(tree)
        if bad:
            raise DamagedCheckpointError(f"{self.where(step)} is damaged: array {name}{bad[0]} holds NaN or infinite values")

    def restore(self, like: dict[str, object], step: int | None = None) -> tuple[dict, dict]:
        """Restore the named trees in `like` (structure, shapes, dtypes) after checking them."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"{self.directory}: no checkpoint to restore")
        meta = self.meta(step)
        saved = meta.get("shapes", {})
        for name, tree in like.items():
            if name not in saved:
                raise CheckpointError(f"{self.where(step)} holds no '{name}' (it holds {sorted(saved)}); "
                                      f"restore that group from a run that trained it")
            want, have = _shapes(tree), saved[name]
            if want != have:
                missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
                wrong = [k for k in sorted(set(want) & set(have)) if want[k] != have[k]]
                detail = (f"missing {missing[:3]} " if missing else "") + (f"unexpected {extra[:3]} " if extra else "") + \
                         (f"shape of {wrong[0]}: checkpoint {have[wrong[0]]}, model {want[wrong[0]]}" if wrong else "")
                raise CheckpointError(f"{self.where(step)}: '{name}' does not match this model ({detail.strip()}); "
                                      f"it was written by a run with another model config (compare the model "
                                      f"section of that run's config.yaml with this one's)")
        digests = meta.get("digests", {}).get("arrays", {})
        dtypes = {name: {p: d.split(":")[0] for p, d in digests.get(name, {}).items()} for name in like}
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                **{name: ocp.args.StandardRestore(_abstract(tree, dtypes[name])) for name, tree in like.items()}))
        except Exception as e:
            raise DamagedCheckpointError(f"{self.where(step)} is damaged: cannot be restored ({type(e).__name__}: "
                                         f"{str(e)[:300]})") from None
        for name in like:
            self._verify(step, name, out[name], meta)
        cast = {name: jax.tree_util.tree_map(lambda x, ref: x.astype(ref.dtype) if x.dtype != ref.dtype else x,
                                             out[name], like[name]) for name in like}
        return cast, meta

    def restore_raw(self, step: int | None = None) -> tuple[dict, dict]:
        """Every named tree of a step as saved (no model needed), checked against its digests."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"{self.directory}: no checkpoint")
        meta = self.meta(step)
        checkpointer = ocp.StandardCheckpointer()
        out = {}
        for name in meta.get("shapes", {}):
            try:
                out[name] = checkpointer.restore(self.directory / str(step) / name)
            except Exception as e:
                raise DamagedCheckpointError(f"{self.where(step)} is damaged: '{name}' cannot be read ({type(e).__name__}: "
                                             f"{str(e)[:200]})") from None
            self._verify(step, name, out[name], meta, by_path=False)
        return out, meta

    def check(self, step: int) -> str | None:
        """None when `step` verifies (metadata, every array's digest, finite values), else why not."""
        try:
            self.restore_raw(step)
        except CheckpointError as e:
            return str(e)
        return None


def load_raw(directory: str | Path) -> dict[str, object]:
    """Every named tree of the newest step in a Store folder, as saved and verified (no model needed)."""
    store = Store(directory)
    try:
        return store.restore_raw()[0]
    finally:
        store.close()


class PhaseCheckpoints:
    """A phase's two checkpoints: `latest` (the whole train state, the data-iterator position, the
    early-stopping record and the time spent, at every evaluation: what a resume continues from) and
    `best` (the trained groups at the best evaluation: what the phase hands on). Each keeps two steps,
    so that a damaged newest latest step has an exact stand-in, and a resume can drop a best step saved
    after the latest one it continues from."""

    def __init__(self, workdir: Path, phase: str):
        self.phase = phase
        self.latest = Store(Path(workdir) / "checkpoints" / phase / "latest", keep=2, writer=True)
        self.best = Store(Path(workdir) / "checkpoints" / phase / "best", keep=2, writer=True)

    def say(self, text: str) -> None:
        print(f"[{self.phase}] {text}")

    def save_latest(self, step: int, state: dict, iterator: dict, stopping: dict, timing: dict) -> None:
        self.latest.save(step, {"state": state}, {"iterator": iterator, "book": stopping, "timing": timing})

    def save_best(self, step: int, group_trees: dict, auc: float) -> None:
        self.best.save(step, group_trees, {"auc": auc, "phase": self.phase})

    def restore_latest(self, like: dict) -> tuple[dict, dict, int] | None:
        """(trees, meta, step) of the newest latest step that verifies; a damaged one is named and passed
        over. None when there is none: the phase starts from its first step."""
        steps = self.latest.steps()
        for step in reversed(steps):
            try:
                restored, meta = self.latest.restore(like, step)
            except DamagedCheckpointError as e:
                self.say(f"not resuming from a damaged checkpoint: {e}")
                continue
            if step != steps[-1]:
                self.say(f"resuming from the older checkpoint {self.latest.where(step)}, which verifies")
            return restored, meta, step
        if steps:
            self.say("no checkpoint of this phase verifies: it starts again from its first step")
        return None

    def discard_after(self, step: int) -> list[str]:
        """Delete the steps after `step` in both stores (-1: all): what a resume from `step` does again.
        Returns what was deleted."""
        gone = []
        for store in (self.latest, self.best):
            for s in store.steps():
                if s > step:
                    store.delete(s)
                    gone.append(store.where(s))
        return gone

    def restore_best(self, like: dict[str, object], step: int | None = None) -> dict[str, object]:
        """The groups named in `like` from the best checkpoint at `step` (default: the newest). A damaged
        one is stood in for by the latest checkpoint of the same step when that verifies and holds every
        group asked for (the groups the phase trained)."""
        step = self.best.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"{self.best.directory}: no checkpoint to restore")
        try:
            return self.best.restore(like, step)[0]
        except DamagedCheckpointError as e:
            damaged = e
        if step not in self.latest.steps():
            raise DamagedCheckpointError(f"{damaged}; no other checkpoint holds step {step}: start the run again "
                                         f"with --restart") from None
        try:
            raw, _ = self.latest.restore_raw(step)
        except DamagedCheckpointError as e:
            raise DamagedCheckpointError(f"{damaged}; and its stand-in: {e}; start the run again with --restart") \
                from None
        trained = groups.group_trees(raw["state"]["trainable"])
        missing = sorted(set(like) - set(trained))
        if missing:
            raise DamagedCheckpointError(f"{damaged}; {self.latest.where(step)} does not hold {missing} (not trained "
                                         f"in phase {self.phase}): start the run again with --restart")
        self.say(f"{damaged}; using {self.latest.where(step)} instead, which verifies and holds the same step")
        return {name: jax.tree_util.tree_map(lambda x, ref: np.asarray(x).astype(ref.dtype), trained[name], like[name])
                for name in like}

    def restore_last(self, like: dict[str, object]) -> dict[str, object]:
        """The groups named in `like` as the phase's last step left them (a phase with restore_best off
        hands these on): the trained groups of the newest latest checkpoint."""
        step = self.latest.latest_step()
        if step is None:
            raise CheckpointError(f"{self.latest.directory}: no checkpoint to restore")
        raw, _ = self.latest.restore_raw(step)
        trained = groups.group_trees(raw["state"]["trainable"])
        return {name: jax.tree_util.tree_map(lambda x, ref: np.asarray(x).astype(ref.dtype), trained[name], like[name])
                for name in like if name in trained}

    def close(self) -> None:
        self.latest.close()
        self.best.close()
