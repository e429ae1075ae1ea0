"""Bring your own interaction log: CSV/TSV/Parquet (user, item, timestamp[, rating]) + items (item, title)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from data_tools.recipe import build_splits, numeric, read_table, split_by_time_fraction
from sasrecllm_jax.data.dataset import DataError


def _timestamps(df: pd.DataFrame, path: Path) -> np.ndarray:
    """Unix seconds, from a column of numbers (taken as unix seconds) or of dates (any format pandas reads,
    UTC unless they say otherwise); a row that is neither like the others is named."""
    raw = df["timestamp"]
    values = pd.to_numeric(raw, errors="coerce")
    if values.notna().all():
        return values.to_numpy().astype(np.int64)
    if values.notna().any():  # numbers, with some rows that are not
        bad, kind = values.isna().to_numpy(), "a number (unix seconds) like the other rows"
    else:
        parsed = pd.to_datetime(raw, errors="coerce", utc=True, format="mixed")
        bad, kind = parsed.isna().to_numpy(), "a date like the other rows"
        if not bad.any():  # whole seconds since 1970, whatever resolution pandas picked (ns before 3.0, us after)
            return ((parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy().astype(np.int64)
    i = int(np.flatnonzero(bad)[0])
    raise DataError(f"{path}: column 'timestamp' row {i} is {raw.iloc[i]!r}, not {kind} ({int(bad.sum())} such "
                    f"row(s)); fix or drop them")


def sample_negatives(pos: pd.DataFrame, all_items: np.ndarray, ratio: int, seed: int) -> pd.DataFrame:
    """For each positive row, `ratio` items the user never interacted with, at the same timestamp."""
    rng = np.random.default_rng(seed)
    seen = pos.groupby("user")["item"].agg(set).to_dict()
    out = []
    for user, ts in zip(pos["user"].to_numpy(), pos["timestamp"].to_numpy()):
        s = seen[user]
        if len(s) >= len(all_items):
            continue
        for _ in range(ratio):
            while (item := all_items[rng.integers(len(all_items))]) in s:
                pass
            out.append((user, item, ts))
    neg = pd.DataFrame(out, columns=["user", "item", "timestamp"])
    neg["label"] = np.int8(0)
    return neg


def prepare_log(interactions: Path, items_path: Path, *, threshold: float, negatives: int, seed: int,
                valid_frac: float, test_frac: float):
    df = read_table(interactions, "interactions need user, item, timestamp[, rating]",
                    ["user", "item", "timestamp"])
    items = read_table(items_path, "the item table needs item, title", ["item", "title"])
    if df.empty:
        raise DataError(f"{interactions}: no rows")
    rows = pd.DataFrame({"user": df["user"].astype(str), "item": df["item"].astype(str),
                         "timestamp": _timestamps(df, interactions)})
    if "rating" in df.columns and negatives == 0:
        rows["label"] = (numeric(df, "rating", interactions) >= threshold).astype(np.int8)
        how = f"label = rating >= {threshold}"
    else:
        if negatives < 1:
            raise DataError(f"{interactions}: no 'rating' column, so the log is positive-only; pass "
                            f"--negatives N (sampled negatives per positive)")
        all_items = items["item"].astype(str).unique()
        rows["label"] = np.int8(1)
        rows = pd.concat([rows, sample_negatives(rows, all_items, negatives, seed)], ignore_index=True)
        how = f"positive-only log, {negatives} sampled negatives per positive (seed {seed})"
    rows["split"] = split_by_time_fraction(rows["timestamp"], valid_frac, test_frac)
    titles = dict(zip(items["item"].astype(str), items["title"].fillna("").astype(str)))
    splits, items_out = build_splits(rows, titles, str(items_path))
    recipe = (f"interaction log: {how}; global time split (valid {valid_frac:.0%}, test {test_frac:.0%} "
              f"of rows, latest last); valid_small = valid.sample(frac=0.5, seed 2023)")
    return splits, items_out, f"log {interactions.name} + {items_path.name}", recipe
