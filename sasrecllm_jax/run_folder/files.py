"""The files of a run folder, written whole or not at all, and the code version every run records.

    RUN/config.yaml      the config it ran with          RUN/results.json   valid and test metrics, timing
    RUN/metrics.jsonl    every train / eval record       RUN/scores.npz     every evaluated row's score
    RUN/tensorboard/     the same records for TensorBoard
    RUN/checkpoints/PHASE/{best,latest}, RUN/final       Orbax checkpoints (train/checkpoint.py)
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_checkout_versions: dict[Path, str] = {}


def code_version() -> str:
    """The source checkout's short commit, with '+dirty' when tracked files differ from it: recorded in
    every results.json and in every phase-cache key. $SASRECLLM_COMMIT, when set, wins: a copy of the tree
    on another machine (the GPU machine) may carry no .git or a stale one, and its sender states which
    clean commit it is. The checkout is read once per process (a run reads it when it starts): a process
    runs the modules it loaded, so a commit or an edit made while a long run is under way must not relabel
    that run's results or cache its phases under code that did not make them."""
    if os.environ.get("SASRECLLM_COMMIT"):
        return os.environ["SASRECLLM_COMMIT"]
    if ROOT not in _checkout_versions:
        try:
            git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, check=True).stdout
            dirty = git("status", "--porcelain", "--untracked-files=no", "--", "sasrecllm_jax", "configs", "train.py").strip()
            _checkout_versions[ROOT] = git("rev-parse", "--short", "HEAD").strip() + ("+dirty" if dirty else "")
        except (OSError, subprocess.CalledProcessError):
            _checkout_versions[ROOT] = "unknown"
    return _checkout_versions[ROOT]


def write_whole(path: Path, data: str | bytes) -> None:
    """Write a run file whole or not at all (a temporary name, then a rename): a reader, such as a grid's
    summary in another process, sees the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)
