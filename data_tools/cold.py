"""New-item rows by construction (`--cold-items FRAC --seed S`): hold a seeded share of the items that
occur in valid/test out of training, so their ID embeddings get no gradient.

A chosen item loses its train rows (as target) and is filtered out of train rows' histories; valid and
test rows keep their histories. `not_cold` (user and item both in train) is recomputed in every split.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from sasrecllm_jax.errors import DataError


def cold_share(text) -> float | None:
    """The --cold-items value as a share in [0, 1); 0 or None means no held-out items (None)."""
    if text is None:
        return None
    try:
        frac = float(text)
    except (TypeError, ValueError):
        frac = float("nan")
    if not 0 <= frac < 1:
        raise DataError(f"--cold-items {text}: the share of valid/test items to hold out of training must be "
                        f"a number from 0 (none) up to, not including, 1; e.g. --cold-items 0.2")
    return frac or None


def without(his: pd.Series, items: np.ndarray) -> list[np.ndarray]:
    """Each history with `items` filtered out (order kept)."""
    if not len(his):
        return []
    lengths = np.array([len(h) for h in his], np.int64)
    flat = np.concatenate([np.asarray(h, np.int64) for h in his] + [np.zeros(0, np.int64)])
    keep = ~np.isin(flat, items)
    kept = np.bincount(np.repeat(np.arange(len(his)), lengths)[keep], minlength=len(his))
    return np.split(flat[keep], np.cumsum(kept)[:-1])


def hold_out_items(splits: dict[str, pd.DataFrame], frac: float, seed: int) -> tuple[dict[str, pd.DataFrame], dict]:
    """Remove a seeded share `frac` of the items that occur (as target) in valid or test from train.
    Returns the new splits and the card's `cold_items` entry: share, seed, `items` (how many were chosen),
    `of_valid_test_items`, `were_in_train` (how many of them train had), `train_rows_dropped`, `iids`
    (the chosen items)."""
    candidates = np.unique(np.concatenate([splits["valid"]["iid"].to_numpy(), splits["test"]["iid"].to_numpy()]))
    n = int(round(frac * len(candidates)))
    if n == 0:
        raise DataError(f"--cold-items {frac}: holds out no item of the {len(candidates)} in valid/test; "
                        f"choose a larger share")
    chosen = np.sort(np.random.default_rng(seed).choice(candidates, n, replace=False))
    train = splits["train"]
    drop = train["iid"].isin(chosen).to_numpy()
    if drop.all():
        raise DataError(f"--cold-items {frac}: every train row is on a held-out item; choose a smaller share")
    new_train = train[~drop].reset_index(drop=True)
    new_train["his"] = without(new_train["his"], chosen)
    out = {"train": new_train, **{k: v.copy() for k, v in splits.items() if k != "train"}}
    users, items = new_train["uid"].unique(), new_train["iid"].unique()
    for df in out.values():
        df["not_cold"] = (df["uid"].isin(users) & df["iid"].isin(items)).astype(np.int8)
    info = {"share": frac, "seed": seed, "items": n, "of_valid_test_items": int(len(candidates)),
            "were_in_train": int(np.isin(chosen, train["iid"].to_numpy()).sum()),
            "train_rows_dropped": int(drop.sum()), "iids": chosen.tolist()}
    return out, info


def recipe_note(info: dict) -> str:
    """The recipe's sentence for a hold-out."""
    return (f"cold items: a seeded share {info['share']:g} (seed {info['seed']}) of the {info['of_valid_test_items']:,} "
            f"items in valid/test, {info['items']:,} items, held out of train (their train rows dropped, "
            f"filtered out of train histories; valid/test histories kept); not_cold recomputed")
