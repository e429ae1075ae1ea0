"""Finished phases reused across runs: a phase is trained once per distinct input, whatever method runs it.

TALLRec's LoRA phase is dual-stage's and plug-and-play's stage 1; SASRec's phase is their encoder
phase, MF's is CoLLM's. With `train.phase_cache: DIR` a run looks a phase up by a key before
training it, and stores what it trained under that key after. A hit hands on exactly the params a
retrain would produce (tested bit for bit), so the experiment grid pays for each phase once.

The key is a SHA-256 of everything the phase's result depends on:
  - the code version (caching is off for a tree with uncommitted changes: no version names it),
    the JAX backend and the devices;
  - the dataset's files and the prompt templates' text (not just their paths);
  - the data section, the model fields the phase's prompt kind reads (a text phase ignores the
    encoder and the mapper), the train fields that shape every phase, the phase itself (its name
    seeds its randomness);
  - the values of the phase's input params except the LLM base (which the config names): whatever
    earlier phases or restores produced is in the key through them.

DIR/KEY/best       the phase's output groups (a checkpoint Store, at the best evaluation's step)
DIR/KEY/meta.json  its timing, the validation metrics it handed on, its metrics.jsonl records, and
                   the run that trained it
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import jax
import numpy as np

from sasrecllm_jax.config import Config, PhaseConfig, to_dict
from sasrecllm_jax.data.encode import prompt_templates
from sasrecllm_jax.run_folder.files import code_version
from sasrecllm_jax.train.checkpoint import Store
from sasrecllm_jax.weights.backbone import weights_source

# train fields that only pick or parameterise the preset phases; the resolved phase carries their effect
_PHASE_SOURCES = ("method", "strategy", "phases", "phase_overrides", "enc_epochs", "enc_lr", "llm_lr",
                  "llm_epochs", "freeze", "log_every", "distributed")


def enabled_reason(cfg: Config) -> str | None:
    """None when the cache can be used, else why not (printed once per run)."""
    if not cfg.train.phase_cache:
        return "train.phase_cache is not set"
    version = code_version()
    if version == "unknown" or version.endswith("+dirty"):
        return (f"the code version is {version!r}: phases from uncommitted code are not cached; commit, or "
                f"set $SASRECLLM_COMMIT on a copy of a clean tree")
    return None


def _hash_tree(h, tree) -> None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        x = np.asarray(jax.device_get(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{x.dtype}|{x.shape}|".encode())
        h.update(np.ascontiguousarray(x).tobytes())


def _hash_files(h, paths) -> None:
    for p in sorted(Path(p) for p in paths):
        h.update(f"{p.name}|".encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())


def _model_fields(cfg: Config, prompt: str) -> dict:
    m = to_dict(cfg.model)
    encoder = {k: m[k] for k in ("encoder", m["encoder"])}
    llm = {k: m[k] for k in ("llm", "llm_overrides", "weights", "lora", "score_head")}
    if prompt == "none":
        return encoder
    if prompt == "text":  # text templates have no ID markers (prompts.Template.load): no mapper setting applies
        return llm
    return {**encoder, **llm, "mapper": m["mapper"]}


def phase_key(cfg: Config, phase: PhaseConfig, inputs: dict, dataset_dir: Path) -> str:
    """The cache key of a phase given its input groups ({group: tree}, the LLM base excluded)."""
    h = hashlib.sha256()
    weights = cfg.model.weights
    stat = None
    if phase.prompt != "none" and weights not in ("smollm2", "random") and Path(weights).exists():
        stat = weights_source(Path(weights))
    phase_fields = {k: v for k, v in to_dict(phase).items() if k != "restore"}  # restored values are inputs
    head = {
        "code": code_version(), "backend": jax.default_backend(),
        "devices": [d.device_kind for d in jax.devices()],
        # late_rows reaches a phase on every row through its inputs alone (the counted terms it restores)
        "data": {k: v for k, v in to_dict(cfg.data).items() if k != "late_rows" or phase.rows != "all"},
        "model": _model_fields(cfg, phase.prompt), "weights_files": stat,
        "train": {k: v for k, v in to_dict(cfg.train).items() if k not in _PHASE_SOURCES + ("phase_cache",)},
        "phase": phase_fields,
    }
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    _hash_files(h, [f for f in Path(dataset_dir).iterdir() if f.is_file()])
    if phase.prompt != "none":
        _hash_files(h, [path for path, _ in prompt_templates(cfg, phase.prompt)])
    for group in sorted(inputs):
        h.update(f"group {group}|".encode())
        _hash_tree(h, inputs[group])
    return h.hexdigest()[:32]


class PhaseCache:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory).absolute()

    def lookup(self, key: str) -> dict | None:
        meta = self.directory / key / "meta.json"
        return json.loads(meta.read_text()) if meta.exists() else None

    def restore(self, key: str, like: dict) -> dict:
        restored, _ = Store(self.directory / key / "best").restore(like)
        return restored

    def remove_abandoned(self) -> list[Path]:
        """Delete the temporary folders of writers that no longer run (a grid killed mid-write leaves one;
        it is never read, but holds a whole checkpoint). Folders of live processes are left alone."""
        gone = []
        for tmp in self.directory.glob(".*.*.partial"):
            pid = tmp.name.rsplit(".", 2)[-2]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(tmp, ignore_errors=True)
                gone.append(tmp)
        return gone

    def put(self, key: str, groups: dict, step: int, meta: dict) -> None:
        """Write an entry whole or not at all: a temporary folder renamed into place."""
        final = self.directory / key
        if final.exists():
            return
        self.remove_abandoned()
        tmp = self.directory / f".{key}.{os.getpid()}.partial"  # per process: grid workers may race on a key
        shutil.rmtree(tmp, ignore_errors=True)
        Store(tmp / "best").save(step, groups, {"phase": meta["phase"]})
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            tmp.rename(final)
        except OSError:  # another process stored the same key first: theirs is the same phase
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True
