"""MovieLens recipes: raw GroupLens ML-1M (CoLLM's split) and ML-100K from the recbole wheel."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from sasrecllm_jax import downloads as fetch
from data_tools.recipe import build_splits, numeric, split_by_time_fraction
from sasrecllm_jax.errors import DataError

ML1M_URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
ML1M_MD5 = "c4d9eecfca2ab87c1945afe126590906"
# CoLLM's month index m = (year - 2000) * 12 + month - 4, and its three windows.
ML1M_MONTHS = {"train": (14, 23), "valid": (24, 28), "test": (29, 33)}
LABEL_THRESHOLD = 4  # label = rating >= 4


def _read_dat(data: bytes, path: str, names: list[str]) -> pd.DataFrame:
    text = data.decode("latin-1")
    rows = [line.split("::") for line in text.splitlines() if line.strip()]
    bad = [i for i, r in enumerate(rows) if len(r) != len(names)]
    if bad:
        raise DataError(f"{path}: line {bad[0] + 1} has {len(rows[bad[0]])} '::'-separated fields, "
                        f"expected {len(names)} ({', '.join(names)}); the file is damaged or truncated")
    return pd.DataFrame(rows, columns=names)


def _ml1m_files(source: Path | None) -> tuple[bytes, bytes, str]:
    if source is None:
        source = fetch.download(ML1M_URL, fetch.cache_dir() / "raw" / "ml-1m.zip", ML1M_MD5)
    if source.is_dir():
        paths = [source / "ratings.dat", source / "movies.dat"]
        for p in paths:
            if not p.exists():
                raise DataError(f"{p}: no such file; --source must hold ratings.dat and movies.dat")
        return paths[0].read_bytes(), paths[1].read_bytes(), str(source)
    try:
        with zipfile.ZipFile(source) as z:
            names = {Path(n).name: n for n in z.namelist()}
            return z.read(names["ratings.dat"]), z.read(names["movies.dat"]), str(source)
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise DataError(f"{source}: not a usable ML-1M zip ({e}); download it again") from None


def prepare_ml1m(source: Path | None):
    ratings_b, movies_b, where = _ml1m_files(source)
    ratings = _read_dat(ratings_b, f"{where}/ratings.dat", ["user", "item", "rating", "timestamp"])
    movies = _read_dat(movies_b, f"{where}/movies.dat", ["item", "title", "genres"])
    path = f"{where}/ratings.dat"
    ts = numeric(ratings, "timestamp", path, integer=True, first=1).astype(np.int64)
    rating = numeric(ratings, "rating", path, first=1)
    date = pd.to_datetime(ts, unit="s")
    month = (date.year - 2000) * 12 + date.month - 4
    split = np.full(len(ratings), "", dtype=object)
    for name, (lo, hi) in ML1M_MONTHS.items():
        split[(month >= lo) & (month <= hi)] = name
    keep = split != ""
    rows = pd.DataFrame({
        "user": numeric(ratings, "user", path, integer=True, first=1).astype(np.int64)[keep],
        "item": numeric(ratings, "item", path, integer=True, first=1).astype(np.int64)[keep],
        "timestamp": ts[keep], "label": (rating[keep] >= LABEL_THRESHOLD).astype(np.int8),
        "split": split[keep],
    })
    titles = dict(zip(numeric(movies, "item", f"{where}/movies.dat", integer=True, first=1).astype(np.int64),
                      movies["title"]))
    splits, items = build_splits(rows, titles, where)
    recipe = ("CoLLM ML-1M: label = rating >= 4; month m = (year-2000)*12 + month - 4 (UTC); "
              "train m 14..23, valid 24..28, test 29..33; valid_small = valid.sample(frac=0.5, seed 2023)")
    return splits, items, f"GroupLens MovieLens-1M ({where})", recipe


RECBOLE_ML100K = "recbole/dataset_example/ml-100k/"


def _read_atomic(data: bytes, path: str) -> pd.DataFrame:
    """RecBole atomic file: tab-separated, header 'name:type'."""
    df = pd.read_csv(io.BytesIO(data), sep="\t", dtype=str, keep_default_na=False)
    df.columns = [c.split(":")[0] for c in df.columns]
    return df


def prepare_ml100k(wheel: Path | None, valid_frac: float, test_frac: float):
    wheel = wheel or fetch.fetch_wheel(*fetch.RECBOLE)
    try:
        with zipfile.ZipFile(wheel) as z:
            inter = _read_atomic(z.read(RECBOLE_ML100K + "ml-100k.inter"), "ml-100k.inter")
            item = _read_atomic(z.read(RECBOLE_ML100K + "ml-100k.item"), "ml-100k.item")
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise DataError(f"{wheel}: not a usable recbole 1.2.1 wheel ({e}); delete it and fetch again") from None
    path = f"{wheel}!ml-100k.inter"
    ts = numeric(inter, "timestamp", path, first=2).astype(np.int64)
    rows = pd.DataFrame({
        "user": numeric(inter, "user_id", path, integer=True, first=2).astype(np.int64),
        "item": numeric(inter, "item_id", path, integer=True, first=2).astype(np.int64),
        "timestamp": ts, "label": (numeric(inter, "rating", path, first=2) >= LABEL_THRESHOLD).astype(np.int8),
        "split": split_by_time_fraction(pd.Series(ts), valid_frac, test_frac),
    })
    year = item["release_year"].where(item["release_year"].str.fullmatch(r"\d{4}"), "")
    title = item["movie_title"].str.strip() + np.where(year != "", " (" + year + ")", "")
    titles = dict(zip(item["item_id"].astype(np.int64), title))
    splits, items = build_splits(rows, titles, str(wheel))
    recipe = (f"ML-100K (recbole 1.2.1 wheel): label = rating >= 4; global time split, last "
              f"{test_frac:.0%} of rows test, the {valid_frac:.0%} before valid, rest train; titles "
              f"'Title (year)'; valid_small = valid.sample(frac=0.5, seed 2023)")
    return splits, items, "MovieLens-100K from recbole==1.2.1", recipe
