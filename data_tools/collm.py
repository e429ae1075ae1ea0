"""Import CoLLM's processed pickles (e.g. ml-1m.zip) into the canonical format, once.

Pickles can run code when loaded, so this refuses to run without --trust-pickle, except on the one
zip whose content is known (CoLLM's published ml-1m.zip, by its sha256).
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from sasrecllm_jax.data.dataset import validate_split
from sasrecllm_jax.downloads import sha256
from sasrecllm_jax.errors import DataError

MEMBERS = {"train": "train_ood2.pkl", "valid": "valid_ood2.pkl", "test": "test_ood2.pkl",
           "valid_small": "valid_small_ood2.pkl"}
COLUMNS = ["uid", "iid", "label", "timestamp", "his", "his_title", "title", "not_cold"]
ML1M_SHA256 = "3e24968eca5707fbd0bd14d375ee47ef9a6f281de91bba06ef9fc19b66699503"  # CoLLM's ml-1m.zip


def known_zip(source: Path) -> bool:
    """Whether `source` is byte for byte CoLLM's ml-1m.zip (then its pickles are the known ones)."""
    return Path(source).is_file() and sha256(Path(source)) == ML1M_SHA256


def prepare_collm(source: Path, trust_pickle: bool = False):
    source = Path(source)
    if not source.exists():
        raise DataError(f"{source}: no such file; pass --source with CoLLM's ml-1m.zip")
    if not trust_pickle and not known_zip(source):
        raise DataError(f"{source} holds Python pickles, which can run code when loaded, and is not the known "
                        f"CoLLM ml-1m.zip (sha256 {ML1M_SHA256[:12]}...). If it comes from a source you trust, "
                        f"pass --trust-pickle; it is converted once into safe Parquet files")
    try:
        with zipfile.ZipFile(source) as z:
            by_name = {Path(n).name: n for n in z.namelist()}
            frames = {}
            for split, member in MEMBERS.items():
                if member not in by_name:
                    raise DataError(f"{source}: no member {member}; expected CoLLM's {list(MEMBERS.values())}")
                try:
                    frames[split] = pd.read_pickle(io.BytesIO(z.read(by_name[member])))
                except DataError:
                    raise
                except Exception as e:  # a truncated pickle raises anything from EOFError to UnpicklingError
                    raise DataError(f"{source}!{member}: cannot be unpickled ({type(e).__name__}: {e}); "
                                    f"the file is damaged, download it again") from None
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{source}: not a readable zip ({e}); download it again") from None

    titles: dict[int, str] = {}
    splits = {}
    for split, df in frames.items():
        where = f"{source}!{MEMBERS[split]}"
        missing = [c for c in COLUMNS if c not in df.columns]
        if missing:
            raise DataError(f"{where}: missing column(s) {missing}")
        his = []
        for i, h in enumerate(df["his"]):
            h = np.asarray(h)
            if len(h) == 0 or h[0] != 0:
                raise DataError(f"{where}: row {i} history {list(h[:3])}... does not start with CoLLM's padding 0")
            his.append(h[1:])
        table = validate_split(pd.DataFrame({"uid": df["uid"], "iid": df["iid"], "label": df["label"],
                                             "timestamp": df["timestamp"], "his": his,
                                             "not_cold": df["not_cold"]}), where)
        for h, ht in zip(table["his"], df["his_title"]):
            titles.update(zip(h.tolist(), list(ht)[1:]))  # an id without a title stays unknown
        titles.update(zip(table["iid"].tolist(), df["title"].astype(str)))
        splits[split] = table
    items = pd.DataFrame({"iid": sorted(titles), "title": [str(titles[i]) for i in sorted(titles)]})
    recipe = ("CoLLM's processed ML-1M (train/valid/test/valid_small _ood2.pkl), converted as is; "
              "CoLLM's leading padding 0 dropped from each history")
    return splits, items, f"CoLLM pickles ({source})", recipe
