"""CoLLM's Amazon-Book recipe from Amazon Reviews 2018 `Books_5.json.gz` + `meta_Books.json.gz`."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd

from data_tools.recipe import build_splits
from sasrecllm_jax.errors import DataError

MIN_RATINGS = 20  # keep users and items with more than 20 ratings in 2017 (one pass)


def _json_lines(path: Path, fields: list[str]):
    if not path.exists():
        raise DataError(f"{path}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    n = 0
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: line {n} is not JSON ({e}); the file is damaged or truncated") from None
                yield n, {k: rec.get(k) for k in fields}
    except (EOFError, OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable after line {n} ({type(e).__name__}: {e}); the file is "
                        f"truncated or corrupt, download it again") from None


def prepare_amazon_book(reviews: Path, meta: Path):
    recs = []
    for n, r in _json_lines(reviews, ["reviewerID", "asin", "overall", "unixReviewTime"]):
        if r["reviewerID"] is None or r["asin"] is None or r["unixReviewTime"] is None:
            raise DataError(f"{reviews}: line {n} lacks reviewerID, asin or unixReviewTime")
        try:
            recs.append((r["reviewerID"], r["asin"], float(r["overall"]), int(r["unixReviewTime"])))
        except (TypeError, ValueError):
            raise DataError(f"{reviews}: line {n} has a non-numeric overall {r['overall']!r} or "
                            f"unixReviewTime {r['unixReviewTime']!r}") from None
    df = pd.DataFrame(recs, columns=["user", "item", "rating", "timestamp"])
    date = pd.to_datetime(df["timestamp"], unit="s")
    df = df[date.dt.year == 2017].copy()
    date = pd.to_datetime(df["timestamp"], unit="s")
    ucount = df["user"].map(df["user"].value_counts())
    icount = df["item"].map(df["item"].value_counts())
    keep = (ucount > MIN_RATINGS) & (icount > MIN_RATINGS)
    df, date = df[keep], date[keep]
    if df.empty:
        raise DataError(f"{reviews}: no 2017 rows with users and items of more than {MIN_RATINGS} ratings")
    df["label"] = (df["rating"] == 5).astype(np.int8)
    split = np.where(date.dt.month <= 11, "train", "dec").astype(object)
    dec = np.flatnonzero(split == "dec")
    dec = dec[np.argsort(df["timestamp"].to_numpy()[dec], kind="stable")]
    half = (len(dec) + 1) // 2
    split[dec[:half]] = "valid"
    split[dec[half:]] = "test"
    df["split"] = split
    titles = {}
    for n, m in _json_lines(meta, ["asin", "title"]):
        if m["asin"] is not None:
            titles[m["asin"]] = m["title"] or ""
    splits, items = build_splits(df[["user", "item", "timestamp", "label", "split"]], titles, str(meta))
    recipe = (f"CoLLM Amazon-Book: 2017 only (UTC); users and items with more than {MIN_RATINGS} ratings "
              f"in 2017 (one pass); label = rating == 5; train = Jan..Nov; December by time, first half "
              f"valid, second half test; valid_small = valid.sample(frac=0.5, seed 2023)")
    return splits, items, f"Amazon Reviews 2018 Books ({reviews.name}, {meta.name})", recipe
