"""RUN/scores.npz: every evaluated row's score, so that runs can be compared on the same rows.

Per split: the score, the label, the warm flag, the new-user and new-item flags, the user as a number
0..k-1 of the split (for UAUC; not the dataset's ids), and a fingerprint of the rows, so that two runs
are only paired on the same rows (python -m sasrecllm_jax.compare). Files written before the new-user and
new-item flags were kept get them from the run's dataset when it is here and its split is those rows.
"""
from __future__ import annotations

import functools
import hashlib
import io
from pathlib import Path

import numpy as np
import yaml

from sasrecllm_jax.data.dataset import load_dataset
from sasrecllm_jax.data.pipeline import SplitData, row_parts
from sasrecllm_jax.errors import ConfigError, DataError
from sasrecllm_jax.run_folder.files import unfinished, write_whole

SCORES_FILE = "scores.npz"


def rows_fingerprint(data: SplitData) -> str:
    """Which rows, in which order: a hash of (user, item, label) per row."""
    return _fingerprint(data.uid, data.iid, data.label)


def _fingerprint(uid, iid, label) -> str:
    h = hashlib.sha256()
    for a in (uid, iid, label):
        h.update(np.ascontiguousarray(a, np.int64).tobytes())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=4)
def _dataset_flags(path: str) -> dict:
    """{split: (fingerprint, new_user, new_item)} of a prepared dataset folder (read once per process)."""
    ds = load_dataset(path)
    train = ds.splits["train"]
    return {name: (_fingerprint(df["uid"], df["iid"], df["label"]), parts["new_user"], parts["new_item"])
            for name, df in ds.splits.items() for parts in [row_parts(df, train)]}


def with_new_flags(run: Path, scores: dict) -> dict:
    """scores with the new_user and new_item flags filled in for the splits whose file has none (written
    before they were kept), from the dataset the run's config.yaml names, when that is a prepared folder
    here and its split holds exactly those rows in that order (their fingerprint); else as they are."""
    missing = [s for s, f in scores.items() if "new_item" not in f and "rows" in f]
    if not missing:
        return scores
    try:
        data = (yaml.safe_load((Path(run) / "config.yaml").read_text()) or {}).get("data", {})
        folders = [Path(data.get("dataset", "")), Path(data.get("data_dir", "data")) / data.get("dataset", "")]
        folder = next(f for f in folders if (f / "dataset.json").exists())
        flags = _dataset_flags(str(folder.resolve()))
    except (OSError, StopIteration, DataError, yaml.YAMLError, AttributeError, TypeError):
        return scores
    out = dict(scores)
    for split in missing:
        fingerprint, new_user, new_item = flags.get(split, (None, None, None))
        if fingerprint == scores[split]["rows"]:
            out[split] = {**scores[split], "new_user": new_user.astype(np.int8), "new_item": new_item.astype(np.int8)}
    return out


def save_scores(path: Path, splits: dict[str, tuple[SplitData, np.ndarray]], extra: dict | None = None) -> None:
    """{split: (rows, scores)} (and `extra` arrays named "SPLIT.FIELD") -> one .npz, written whole or not at all."""
    arrays = dict(extra or {})
    for split, (data, scores) in splits.items():
        arrays.update({f"{split}.score": np.asarray(scores, np.float64), f"{split}.label": data.label.astype(np.int8),
                       f"{split}.warm": np.asarray(data.not_cold, np.int8),
                       f"{split}.user": np.unique(data.uid, return_inverse=True)[1].astype(np.int32),
                       **({f"{split}.new_user": data.new_user.astype(np.int8),
                           f"{split}.new_item": data.new_item.astype(np.int8)} if data.new_user is not None else {}),
                       f"{split}.rows": np.array(rows_fingerprint(data))})
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_whole(path, buf.getvalue())


def load_scores(run: Path) -> dict[str, dict]:
    """RUN/scores.npz -> {split: {score, label, warm, user, rows}} (no user in files made before it)."""
    path = Path(run) / SCORES_FILE
    if not path.exists():
        why = unfinished(run) if not (Path(run) / "results.json").exists() else None
        if why:
            raise ConfigError(why)
        raise ConfigError(f"{run}: no {SCORES_FILE}. Runs keep their per-row scores since this was added; "
                          f"run the method again (a run whose results.json came from an older commit has none)")
    out: dict[str, dict] = {}
    with np.load(path) as z:
        for key in z.files:
            split, field = key.rsplit(".", 1)
            value = z[key]
            out.setdefault(split, {})[field] = str(value) if field == "rows" else value
    return with_new_flags(run, out)
