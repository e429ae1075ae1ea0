"""The one recipe every source goes through (CoLLM's).

Input: one row per impression with raw `user`, `item`, `timestamp`, `label` and `split`
(train / valid / test), plus a raw item -> title mapping. Output: canonical split tables (with each row's raw
user id as `user`, which write_dataset keeps as users.parquet) and the item table (iid, title, and the raw
id as `item`).
  - rows sorted by (user, time), stably;
  - users and items renumbered from 1 by order of first appearance in that order;
  - `his` = the user's earlier positive items, oldest first, across split boundaries: the positives
    before the row in that order (`history="order"`, CoLLM's), or those strictly earlier in time
    (`history="time"`: rows at one time, e.g. a positive and its sampled negatives, share a history
    and never see each other);
  - `not_cold` = 1 when the row's user and item both occur in train;
  - valid_small = half of valid, `DataFrame.sample(frac=0.5, random_state=2023)`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sasrecllm_jax.data.dataset import id_text, show_value
from sasrecllm_jax.errors import DataError

VALID_SMALL_SEED = 2023


def build_splits(rows: pd.DataFrame, titles: dict, where: str, *,
                 history: str = "order") -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    for col in ("user", "item", "timestamp", "label", "split"):
        if col not in rows.columns:
            raise DataError(f"{where}: internal recipe needs column '{col}'")
    for split in ("train", "valid", "test"):
        if not (rows["split"] == split).any():
            raise DataError(f"{where}: the {split} split is empty; check the time ranges or the "
                            f"split fractions for this data")
    rows = rows.sort_values(["user", "timestamp"], kind="stable").reset_index(drop=True)
    user_codes, user_uniques = pd.factorize(rows["user"], sort=False)
    uid = user_codes + 1
    item_codes, item_uniques = pd.factorize(rows["item"], sort=False)
    iid = item_codes + 1
    label = rows["label"].to_numpy().astype(np.int8)
    his = histories(uid, iid, label, rows["timestamp"].to_numpy(), strict_time=history == "time")

    split = rows["split"].to_numpy()
    train = split == "train"
    train_users = np.zeros(uid.max() + 1, bool)
    train_users[uid[train]] = True
    train_items = np.zeros(iid.max() + 1, bool)
    train_items[iid[train]] = True
    table = pd.DataFrame({
        "uid": uid.astype(np.int64), "iid": iid.astype(np.int64), "label": label,
        "timestamp": rows["timestamp"].to_numpy().astype(np.int64), "his": his,
        "not_cold": (train_users[uid] & train_items[iid]).astype(np.int8),
        "user": np.asarray([str(u) for u in user_uniques], dtype=object)[user_codes],  # own ids: users.parquet
    })
    out = {name: table[split == name].reset_index(drop=True) for name in ("train", "valid", "test")}
    out["valid_small"] = out["valid"].sample(frac=0.5, random_state=VALID_SMALL_SEED)
    missing = [raw for raw in item_uniques if raw not in titles]
    if missing:
        raise DataError(f"{where}: item {missing[0]!r} (and {len(missing) - 1} more) has no title in the "
                        f"item table; add the missing items or drop their interactions")
    items = pd.DataFrame({"iid": np.arange(1, len(item_uniques) + 1),
                          "title": [str(titles[raw]) for raw in item_uniques],
                          "item": [str(raw) for raw in item_uniques]})  # the source's own ids, kept
    return out, items


def histories(uid: np.ndarray, iid: np.ndarray, label: np.ndarray, ts: np.ndarray, *,
              strict_time: bool) -> list[np.ndarray]:
    """Each row's history: its user's positive items before it, oldest first. Rows come sorted by (user,
    time). With `strict_time`, only positives strictly earlier in time count, so rows at one time share
    one history; otherwise every earlier row in the order counts."""
    his: list[np.ndarray] = [None] * len(uid)  # type: ignore[list-item]
    empty = np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, uid[1:] != uid[:-1]])
    ends = np.r_[starts[1:], len(uid)]
    for s, e in zip(starts, ends):
        seen: list[int] = []
        pending: list[int] = []
        current = empty
        for r in range(s, e):
            if pending and (not strict_time or ts[r] != ts[r - 1]):
                seen.extend(pending)
                pending = []
                current = np.asarray(seen, dtype=np.int64)
            his[r] = current
            if label[r] == 1:
                pending.append(int(iid[r]))
    return his


def split_by_time_fraction(timestamps: pd.Series, valid: float, test: float) -> np.ndarray:
    """Global chronological split: the last `test` share of rows is test, the `valid` share before it
    valid, the rest train. Rows at one time always land in one split (ties at a cut go to the later
    split), so no row of a split is later than any row of the next."""
    if not (0 < valid < 1 and 0 < test < 1 and valid + test < 1):
        raise DataError(f"split fractions valid={valid}, test={test} must be in (0, 1) and sum below 1")
    t = timestamps.to_numpy()
    order = np.sort(t)
    cut_valid = order[int(len(t) * (1 - valid - test))]
    cut_test = order[int(len(t) * (1 - test))]
    return np.where(t >= cut_test, "test", np.where(t >= cut_valid, "valid", "train"))


def parse_columns(spec: str | None, option: str, defaults: dict[str, str]) -> dict[str, str]:
    """`name=column,...` -> {canonical name: the file's column}, starting from `defaults` (each canonical
    name read from a column of its own name). An unknown name or a malformed pair is refused."""
    columns = dict(defaults)
    for pair in (spec or "").split(","):
        if not pair.strip():
            continue
        name, sep, column = (x.strip() for x in pair.partition("="))
        if not sep or not column:
            raise DataError(f"{option} {spec!r}: {pair.strip()!r} is not NAME=COLUMN; write e.g. "
                            f"{option} " + ",".join(f"{k}={k}" for k in defaults))
        if name not in defaults:
            raise DataError(f"{option} {spec!r}: unknown name {name!r}; the names are {', '.join(defaults)}")
        columns[name] = column
    return columns


def first_line(path) -> int | None:
    """The file line of data row 0: 2 for a text table with a header, None for Parquet (rows are named
    by their 0-based number there)."""
    return None if Path(path).suffix == ".parquet" else 2


def row_name(i: int, first: int | None) -> str:
    """Data row i (0-based) as a person finds it: 'line N' in a text file, 'row N' in Parquet."""
    return f"row {i}" if first is None else f"line {i + first}"


def read_table(path, where: str, columns: dict[str, str], optional: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a CSV / TSV / Parquet file, naming the file on every failure. `columns` maps each canonical
    name to the file's column; the result has the canonical names (the `optional` ones only where the
    file has them)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    try:
        if path.suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, sep=None if path.suffix not in (".csv", ".tsv") else
                             ("\t" if path.suffix == ".tsv" else ","), engine="python",
                             dtype=str, keep_default_na=False, skipinitialspace=True)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    except Exception as e:  # pandas / pyarrow raise many types for a broken file
        raise DataError(f"{path}: cannot be read as a table ({type(e).__name__}: {e}); "
                        f"check that the file is complete and in CSV, TSV or Parquet format") from None
    df.columns = [c.strip() if isinstance(c, str) else c for c in df.columns]
    missing = [f"{col} ({name})" if col != name else col for name, col in columns.items()
               if col not in df.columns and name not in optional]
    if missing:
        seps = [sep for sep in (";", "|", "\t") if len(df.columns) == 1 and sep in str(df.columns[0])]
        hint = (f"; it looks {seps[0]!r}-separated, but a {path.suffix} file is read "
                f"{'comma' if path.suffix == '.csv' else 'tab'}-separated: save it with "
                f"{'commas' if path.suffix == '.csv' else 'tabs'}, or name it .txt (its delimiter is detected)"
                if seps and path.suffix in (".csv", ".tsv") else
                "; name the file's columns with the column option (see --help)")
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} ({where}); it has {list(df.columns)}{hint}")
    return pd.DataFrame({name: df[col] for name, col in columns.items() if col in df.columns})


def numeric(df: pd.DataFrame, col: str, path, *, integer: bool = False, first: int | None = None) -> np.ndarray:
    """A column as numbers; the first bad cell is named as `row_name(i, first)`."""
    values = pd.to_numeric(df[col], errors="coerce")
    bad = values.isna().to_numpy()
    if integer:
        bad = bad | (values.fillna(0) != np.floor(values.fillna(0))).to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        kind = "an integer" if integer else "a number"
        raise DataError(f"{path}: column '{col}' {row_name(i, first)} is {show_value(df[col].iloc[i])}, not "
                        f"{kind}; fix or drop that row")
    return values.to_numpy()


def collapse_duplicates(rows: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Keep each (user, item) pair's first row in time (the file's first among equal times); returns the
    rows in their original order and how many were dropped."""
    first = rows.sort_values("timestamp", kind="stable").drop_duplicates(["user", "item"], keep="first")
    return rows.loc[np.sort(first.index.to_numpy())], len(rows) - len(first)


def item_titles(items: pd.DataFrame, path, first: int | None, placeholder: str | None) -> tuple[dict, int]:
    """{item: title} from an item table (canonical columns item, title). An empty or missing title is
    refused, or replaced by `placeholder` when one is given; returns the titles and how many were
    replaced. An item listed twice is refused."""
    title = items["title"].astype(object)
    empty = (title.isna() | (title.astype(str).str.strip() == "")).to_numpy()
    if empty.any() and placeholder is None:
        i = int(np.flatnonzero(empty)[0])
        raise DataError(f"{path}: {int(empty.sum())} item(s) have an empty or missing title (the first at "
                        f"{row_name(i, first)}, item {show_value(items['item'].iloc[i])}); fill them in, or pass "
                        f"--missing-title TEXT to give them that placeholder")
    keys = id_text(items["item"])
    dup = keys.duplicated().to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise DataError(f"{path}: item {keys.iloc[i]!r} is listed again at {row_name(i, first)}; keep one "
                        f"row per item")
    values = np.where(empty, placeholder or "", title.astype(str).to_numpy())
    return dict(zip(keys, values)), int(empty.sum())
