"""Named datasets: a name -> a fixed recipe, ready for `write_dataset`.

    splits, items, source, recipe, extra = prepare_named("amazon-books")
    write_dataset(out, splits, items, source=source, recipe=recipe, extra=extra)

`NAMED` lists the names. The shared copies are looked up beside the repository, in
`<repo>/../shared/data/`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import pandas as pd

from data_tools import audit, cold, collm, movielens
from data_tools.log import prepare_log
from sasrecllm_jax.errors import DataError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
AMAZON_BOOKS_DIR = SHARED_DATA / "amazon-books"
ML1M_COLLM_ZIP = SHARED_DATA / "ml-1m-collm" / "ml-1m.zip"
MISSING_TITLE = "(untitled)"  # the placeholder for Amazon Books' one empty title

# (splits, items, source, recipe, extra card): what every prepare function hands to write_dataset
Built = tuple[dict[str, pd.DataFrame], pd.DataFrame, str, str, dict]


def finish(built: tuple, *, cold_items: float | None = None, seed: int = 0) -> Built:
    """A source's (splits, items, source, recipe[, extra]) made ready for `write_dataset`: a share
    `cold_items` of the valid/test items held out of train (seeded; `data_tools.cold`), then the leak
    audit (`data_tools.audit`) added to the extra card as `audit`."""
    splits, items, source, recipe, *rest = built
    extra = dict(rest[0]) if rest else {}
    if cold_items:
        splits, info = cold.hold_out_items(splits, cold_items, seed)
        extra["cold_items"] = info
        recipe = f"{recipe}; {cold.recipe_note(info)}"
    extra["audit"] = audit.audit(splits)
    return splits, items, source, recipe, extra


def amazon_books(source: Path | None = None, *, seed: int = 0) -> tuple:
    """Amazon Books (a positive-only log, `interactions.csv` user_id,item_id,timestamp and `items.csv`
    item_id,title in `source`, default the shared copy): 1 sampled negative per positive, a global time
    split (valid 10%, test 10% of rows, latest last), the one empty title as MISSING_TITLE."""
    source = Path(source) if source is not None else AMAZON_BOOKS_DIR
    for f in ("interactions.csv", "items.csv"):
        if not (source / f).exists():
            raise DataError(f"{source / f}: no such file; pass --source DIR with Amazon Books' interactions.csv "
                            f"and items.csv")
    splits, items, _, recipe, extra = prepare_log(
        source / "interactions.csv", source / "items.csv", negatives=1, seed=seed, valid_frac=0.1,
        test_frac=0.1, columns="user=user_id,item=item_id", item_columns="item=item_id",
        missing_title=MISSING_TITLE)
    return splits, items, f"Amazon Books ({source})", f"Amazon Books {recipe}", extra


def ml100k() -> tuple:
    return movielens.prepare_ml100k(None, 0.1, 0.1)


def ml1m_collm() -> tuple:
    if not ML1M_COLLM_ZIP.exists():
        raise DataError(f"{ML1M_COLLM_ZIP}: no such file; prepare ml1m-collm by hand with "
                        f"`python -m data_tools prepare ml1m-collm --source ml-1m.zip --trust-pickle --out DIR`")
    return collm.prepare_collm(ML1M_COLLM_ZIP)  # the known zip (sha256-checked) needs no --trust-pickle


@dataclasses.dataclass(frozen=True)
class Named:
    """A named dataset: its source's builder and the held-out item share (None: none) and seed."""
    build: Callable[[], tuple]
    cold_items: float | None = None
    seed: int = 0


NAMED: dict[str, Named] = {
    "ml100k": Named(ml100k),
    "ml1m-collm": Named(ml1m_collm),
    "ml1m-collm-cold": Named(ml1m_collm, cold_items=0.2, seed=0),
    "amazon-books": Named(amazon_books),
    "amazon-books-cold": Named(amazon_books, cold_items=0.2, seed=0),
}


def prepare_named(name: str) -> Built:
    """The named dataset's (splits, items, source, recipe, extra card), for `write_dataset`."""
    if name not in NAMED:
        raise DataError(f"{name!r} is not a named dataset ({', '.join(NAMED)}); prepare it with "
                        f"`python -m data_tools prepare ...` and name its folder")
    n = NAMED[name]
    return finish(n.build(), cold_items=n.cold_items, seed=n.seed)
