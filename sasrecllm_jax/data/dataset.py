"""The canonical on-disk dataset: one folder, written once by `data_tools`, read by everything else.

    DIR/train.parquet, valid.parquet, valid_small.parquet, test.parquet
        uid int64 (>= 1), iid int64 (>= 1), label int8 (0/1), timestamp int64 (unix s),
        his list<int64> (the user's earlier positive items, oldest first, no padding),
        not_cold int8 (1 = user and item both seen in train: "warm")
    DIR/items.parquet      iid int64, title string (every iid used anywhere is listed), and item string:
                           the source's own id of the item (absent in folders written without it)
    DIR/users.parquet      uid int64, user string: the source's own id of each user (absent in folders
                           written without them)
    DIR/dataset.json       the card: source, recipe, counts, id ranges, format version

Id 0 is padding and never appears in a table.

The card (`dataset.json`) holds `format_version`, `source`, `recipe`, `users` and `items` ({count,
min_id, max_id}), and per split under `splits.NAME`: `rows`, `users`, `items`, `positive_rate`,
`warm_rows` / `cold_rows` (from `not_cold`), `time_range`, `max_history` and `causes`, the split's rows
counted by why they are warm or cold, measured against the train split:
    warm      the user and the item both occur in train
    new_user  the user does not occur in train, the item does
    new_item  the item does not occur in train (as a target), the user does
    both      neither occurs in train
(the four add up to `rows`; train itself is all `warm`). Keys a recipe adds through `extra`, e.g.
`audit` (label-free shortcut AUCs per split, `data_tools.audit`), `cold_items`, `input`, sit at the
top level. Folders written before `causes` existed get it computed when loaded.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from sasrecllm_jax.errors import DataError

FORMAT_VERSION = 1
SPLITS = ("train", "valid", "valid_small", "test")
SPLIT_COLUMNS = ("uid", "iid", "label", "timestamp", "his", "not_cold")


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A loaded canonical dataset: split tables plus the item table and the card."""
    path: Path
    splits: dict[str, pd.DataFrame]
    items: pd.DataFrame
    card: dict
    users: pd.DataFrame | None = None  # uid, user (the source's own id); None when the folder has none

    @property
    def num_items(self) -> int:
        return int(self.card["items"]["max_id"])

    @property
    def num_users(self) -> int:
        return int(self.card["users"]["max_id"])

    def digest(self) -> str:
        """sha256 of what the ids mean and which rows there are: the item table and every split's (uid, iid,
        label); a run records it, so that a dataset prepared again differently is not read with its ids."""
        h = hashlib.sha256()
        h.update(self.items["iid"].to_numpy(np.int64).tobytes())
        h.update("\x00".join(self.items["title"].astype(str)).encode())
        for name in sorted(self.splits):
            df = self.splits[name]
            h.update(name.encode())
            for col in ("uid", "iid", "label"):
                h.update(df[col].to_numpy(np.int64).tobytes())
        return h.hexdigest()

    def item_ids(self) -> np.ndarray | None:
        """The source's own item ids indexed by iid (index 0 is ""), or None when the folder has none."""
        if "item" not in self.items.columns:
            return None
        out = np.full(self.num_items + 1, "", dtype=object)
        out[self.items["iid"].to_numpy()] = self.items["item"].astype(str).to_numpy()
        return out

    @functools.cached_property
    def _iid_index(self) -> dict[str, int] | None:
        ids = self.item_ids()
        return None if ids is None else {own_id: iid for iid, own_id in enumerate(ids) if iid}

    @functools.cached_property
    def _uid_index(self) -> dict[str, int] | None:
        if self.users is None:
            return None
        return {"": 0, **dict(zip(self.users["user"].astype(str), self.users["uid"].astype(int)))}

    def iids_of(self, own: list[str], what: str) -> list[int]:
        """The iids of items named by the source's own ids; an id the dataset does not hold (or a dataset
        prepared without own ids) is refused, naming it."""
        index = self._iid_index
        if index is None:
            raise DataError(f"{what}: {self.path} keeps no item ids of its source (items.parquet has no column "
                            f"'item'); give the dataset's iids, or prepare the dataset again with data_tools")
        missing = [x for x in own if x not in index]
        if missing:
            more = f"; {len(missing) - 1} more unknown" if len(missing) > 1 else ""
            raise DataError(f"{what}: item {missing[0]!r} is not an item of {self.path} (its own ids are in "
                            f"items.parquet, column 'item'){more}")
        return [index[x] for x in own]

    def uids_of(self, own: list[str], what: str) -> list[int]:
        """The uids of users named by the source's own ids ("" names a user the dataset does not know: 0);
        an id it does not hold (or a dataset that keeps no user ids) is refused, naming it."""
        index = self._uid_index
        if index is None:
            raise DataError(f"{what}: {self.path} keeps no user ids of its source (no users.parquet); give the "
                            f"dataset's uid, or prepare the dataset again with data_tools")
        missing = [x for x in own if str(x).strip() not in index]
        if missing:
            raise DataError(f"{what}: user {missing[0]!r} is not a user of {self.path} (its own ids are in "
                            f"users.parquet, column 'user'); for a user it does not know, leave the id empty "
                            f"(or --user out)")
        return [index[str(x).strip()] for x in own]

    def titles(self) -> np.ndarray:
        """Titles indexed by iid (index 0 is the empty padding title)."""
        out = np.full(self.num_items + 1, "", dtype=object)
        out[self.items["iid"].to_numpy()] = self.items["title"].to_numpy()
        return out


def show_value(value) -> str:
    """A cell value as a user wrote it: 2.5, 'five' (no numpy reprs)."""
    return repr(value.item() if hasattr(value, "item") else value)


def id_text(values: pd.Series) -> pd.Series:
    """Ids as text, whole-number floats written as integers: a Parquet or CSV id column that holds floats
    (pandas reads an integer column with a gap as float) names item 7 as '7', as the other table does.
    A missing id (NaN, None) is ''."""
    missing = values.isna().to_numpy()
    if pd.api.types.is_float_dtype(values):
        v = values.to_numpy()
        whole = np.isfinite(v) & (v == np.floor(np.where(np.isfinite(v), v, 0)))
        if (whole | missing).all():
            text = np.where(missing, "", np.where(missing, 0, v).astype(np.int64).astype(str)).astype(object)
            return pd.Series(text, index=values.index)
    return pd.Series(np.where(missing, "", values.astype(str).to_numpy()).astype(object), index=values.index)


def _int_column(df: pd.DataFrame, col: str, where: str, *, minimum: int) -> np.ndarray:
    values = pd.to_numeric(df[col], errors="coerce")
    bad = values.isna() | (values != np.floor(values.fillna(0)))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{where}: column '{col}' row {i} is {show_value(df[col].iloc[i])}, not an integer; "
                        f"fix or drop that row and run again")
    values = values.astype(np.int64)
    if (values < minimum).any():
        i = int(np.flatnonzero((values < minimum).to_numpy())[0])
        raise DataError(f"{where}: column '{col}' row {i} is {values.iloc[i]}, below {minimum}; "
                        f"ids must be positive integers (0 is padding)")
    return values.to_numpy()


def validate_split(df: pd.DataFrame, where: str, known_items: np.ndarray | None = None) -> pd.DataFrame:
    """Check one split table against the schema and return it with canonical dtypes."""
    missing = [c for c in SPLIT_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}; a split needs {list(SPLIT_COLUMNS)}")
    if len(df) == 0:
        raise DataError(f"{where}: the split is empty; check the time ranges of your split")
    out = pd.DataFrame({
        "uid": _int_column(df, "uid", where, minimum=1),
        "iid": _int_column(df, "iid", where, minimum=1),
        "label": _int_column(df, "label", where, minimum=0).astype(np.int8),
        "timestamp": _int_column(df, "timestamp", where, minimum=0),
        "not_cold": _int_column(df, "not_cold", where, minimum=0).astype(np.int8),
    })
    if (out["label"] > 1).any() or (out["not_cold"] > 1).any():
        col = "label" if (out["label"] > 1).any() else "not_cold"
        i = int(np.flatnonzero((out[col] > 1).to_numpy())[0])
        raise DataError(f"{where}: column '{col}' row {i} is {out[col].iloc[i]}; it must be 0 or 1")
    his = [np.asarray(h if h is not None else [], dtype=np.int64) for h in df["his"]]
    if known_items is not None:
        known = np.zeros(int(max(known_items.max(), out["iid"].max())) + 2, dtype=bool)
        known[known_items] = True
        flat = np.concatenate(his) if his else np.zeros(0, np.int64)
        rows = np.repeat(np.arange(len(his)), [len(h) for h in his])
        for name, ids, row_of in (("iid", out["iid"].to_numpy(), np.arange(len(out))), ("his", flat, rows)):
            bad = ~known[np.clip(ids, 0, len(known) - 1)] | (ids >= len(known))
            if bad.any():
                j = int(np.flatnonzero(bad)[0])
                raise DataError(f"{where}: column '{name}' row {int(row_of[j])} names item {int(ids[j])}, "
                                f"which is not in the item table; add it to the items or drop the row")
    out["his"] = his
    return out[list(SPLIT_COLUMNS)]


def _stats(df: pd.DataFrame) -> dict:
    return {
        "rows": int(len(df)),
        "users": int(df["uid"].nunique()),
        "items": int(df["iid"].nunique()),
        "positive_rate": float(df["label"].mean()),
        "warm_rows": int((df["not_cold"] == 1).sum()),
        "cold_rows": int((df["not_cold"] == 0).sum()),
        "time_range": [int(df["timestamp"].min()), int(df["timestamp"].max())],
        "max_history": int(df["his"].map(len).max()),
    }


CAUSES = ("warm", "new_user", "new_item", "both")


def cause_masks(df: pd.DataFrame, train: pd.DataFrame) -> dict[str, np.ndarray]:
    """For each cause in CAUSES (see the module docstring), which of the split's rows have it, against
    the train split; every row has exactly one."""
    new_user = ~df["uid"].isin(train["uid"]).to_numpy()
    new_item = ~df["iid"].isin(train["iid"]).to_numpy()
    return {"warm": ~new_user & ~new_item, "new_user": new_user & ~new_item,
            "new_item": ~new_user & new_item, "both": new_user & new_item}


def causes(df: pd.DataFrame, train: pd.DataFrame) -> dict:
    """A split's rows counted by cause, against the train split: {warm, new_user, new_item, both}; they
    add up to the split's rows."""
    return {k: int(m.sum()) for k, m in cause_masks(df, train).items()}


def make_card(splits: dict[str, pd.DataFrame], items: pd.DataFrame, *, source: str, recipe: str,
              extra: dict | None = None) -> dict:
    uids = np.concatenate([s["uid"].to_numpy() for s in splits.values()])
    return {
        "format_version": FORMAT_VERSION,
        "source": source,
        "recipe": recipe,
        "splits": {name: {**_stats(df), "causes": causes(df, splits["train"])} for name, df in splits.items()},
        "users": {"count": int(len(np.unique(uids))), "min_id": int(uids.min()), "max_id": int(uids.max())},
        "items": {"count": int(len(items)), "min_id": int(items["iid"].min()), "max_id": int(items["iid"].max())},
        **(extra or {}),
    }


def check_replaceable(out: str | os.PathLike, overwrite: bool) -> None:
    """Refuse an --out that exists, unless overwrite is set and it is a dataset folder (its dataset.json and
    the files a dataset holds, nothing else) or empty: --overwrite never deletes anything else."""
    out = Path(out)
    if not out.exists():
        return
    if not overwrite:
        raise DataError(f"{out} exists; choose another --out or pass --overwrite to replace it")
    if not out.is_dir():
        raise DataError(f"{out} is a file, not a dataset folder; choose another --out")
    names = {p.name for p in out.iterdir()}
    ours = {"dataset.json", "items.parquet", "users.parquet", *(f"{s}.parquet" for s in SPLITS)}
    if names and ("dataset.json" not in names or names - ours):
        other = sorted(names - ours) if "dataset.json" in names else sorted(names)
        raise DataError(f"{out} is not a dataset folder (it holds {', '.join(other[:5])}"
                        f"{' ...' if len(other) > 5 else ''}); --overwrite replaces only a folder data_tools "
                        f"wrote: choose another --out")


def write_dataset(out: str | os.PathLike, splits: dict[str, pd.DataFrame], items: pd.DataFrame, *,
                  source: str, recipe: str, overwrite: bool = False, extra: dict | None = None) -> dict:
    """Validate and write a dataset atomically: into a temporary folder, renamed when complete."""
    out = Path(out).absolute()
    check_replaceable(out, overwrite)
    if set(splits) != set(SPLITS):
        raise DataError(f"a dataset needs splits {SPLITS}, got {sorted(splits)}")
    own_ids = id_text(items["item"]) if "item" in items.columns else None
    items = pd.DataFrame({"iid": _int_column(items, "iid", "items", minimum=1),
                          "title": items["title"].fillna("").astype(str)})
    if items["iid"].duplicated().any():
        raise DataError(f"items: iid {int(items['iid'][items['iid'].duplicated()].iloc[0])} is listed twice")
    if own_ids is not None:
        dup = own_ids.duplicated() & (own_ids != "")
        if dup.any():
            raise DataError(f"items: the source's item id {own_ids[dup].iloc[0]!r} names two iids (column 'item' "
                            f"holds each item's own id; rename a column that holds something else)")
        items["item"] = own_ids.to_numpy()
    known = items["iid"].to_numpy()
    users = own_user_ids(splits)
    splits = {name: validate_split(splits[name], name, known) for name in SPLITS}
    card = make_card(splits, items, source=source, recipe=recipe, extra=extra)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for name, df in splits.items():
            df.to_parquet(tmp / f"{name}.parquet", index=False)
        items.to_parquet(tmp / "items.parquet", index=False)
        if users is not None:
            users.to_parquet(tmp / "users.parquet", index=False)
        (tmp / "dataset.json").write_text(json.dumps(card, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return card


def own_user_ids(splits: dict[str, pd.DataFrame]) -> pd.DataFrame | None:
    """(uid, user) from the splits' `user` column (the source's own user ids), one row per uid; None when the
    splits carry none. A uid with two own ids, or an own id on two uids, is refused."""
    if not all("user" in df.columns for df in splits.values()):
        return None
    pairs = pd.concat([df[["uid", "user"]] for df in splits.values()]).drop_duplicates()
    pairs = pairs.assign(uid=pairs["uid"].astype(np.int64), user=pairs["user"].astype(str))
    for col, other in (("uid", "user"), ("user", "uid")):
        dup = pairs[col].duplicated()
        if dup.any():
            raise DataError(f"splits: {col} {pairs[col][dup].iloc[0]!r} has two {other}s; one user, one id")
    return pairs.sort_values("uid").reset_index(drop=True)


def load_dataset(path: str | os.PathLike) -> Dataset:
    """Read a canonical dataset folder, checking the card and the schema."""
    path = Path(path)
    card_path = path / "dataset.json"
    if not card_path.exists():
        raise DataError(f"{path}: no dataset.json; prepare the data first with "
                        f"`python -m data_tools prepare DATASET --out {path}`")
    card = json.loads(card_path.read_text())
    if card.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{card_path}: format version {card.get('format_version')}, this code reads "
                        f"{FORMAT_VERSION}; prepare the dataset again with this version")
    try:
        items = pd.read_parquet(path / "items.parquet")
        users = pd.read_parquet(path / "users.parquet") if (path / "users.parquet").exists() else None
        splits = {}
        for name in SPLITS:
            df = pd.read_parquet(path / f"{name}.parquet")
            df["his"] = [np.asarray(h, dtype=np.int64) for h in df["his"]]
            splits[name] = df
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read the dataset ({e}); prepare it again") from None
    for name, df in splits.items():
        if len(df) != card["splits"][name]["rows"]:
            raise DataError(f"{path / (name + '.parquet')}: {len(df)} rows, the card says "
                            f"{card['splits'][name]['rows']}; the folder is damaged, prepare it again")
        card["splits"][name].setdefault("causes", causes(df, splits["train"]))  # folders written before it
    return Dataset(path=path, splits=splits, items=items, card=card, users=users)
