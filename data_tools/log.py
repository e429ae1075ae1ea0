"""Bring your own interaction log: CSV/TSV/Parquet (user, item, timestamp[, rating]) + items (item, title).

A rated log is labelled by `rating >= threshold`. A positive-only log (no rating column) gets sampled
negatives: each is the same impression as its positive with another item, i.e. the positive's user,
time and history, and an item that existed by then (first seen in the log at or before that time)
and that the user never interacted with.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from data_tools.recipe import (build_splits, collapse_duplicates, first_line, item_titles, numeric,
                               parse_columns, read_table, row_name, split_by_time_fraction)
from sasrecllm_jax.data.dataset import id_text
from sasrecllm_jax.errors import DataError

LOG_COLUMNS = {"user": "user", "item": "item", "timestamp": "timestamp", "rating": "rating"}
ITEM_COLUMNS = {"item": "item", "title": "title"}
RANDOM_TRIES = 32  # rejection rounds before a positive's eligible items are listed exactly


def _timestamps(df: pd.DataFrame, path: Path, first: int | None, date_format: str | None = None) -> np.ndarray:
    """Unix seconds, from a column of numbers (taken as unix seconds) or of dates (UTC unless they say
    otherwise): ISO 8601, `date_format` (strftime codes) when given, else any format pandas reads as long as
    no date reads differently day-first and month-first; a row that is neither like the others is named."""
    raw = df["timestamp"]
    if pd.api.types.is_datetime64_any_dtype(raw):  # a Parquet datetime column (pd.to_numeric gives its ticks)
        if raw.isna().any():
            i = int(np.flatnonzero(raw.isna().to_numpy())[0])
            raise DataError(f"{path}: column 'timestamp' {row_name(i, first)} is empty; fix or drop that row")
        stamps = raw.dt.tz_localize("UTC") if raw.dt.tz is None else raw
        return ((stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy().astype(np.int64)
    values = pd.to_numeric(raw, errors="coerce")
    if values.notna().all() and date_format is None:
        return values.to_numpy().astype(np.int64)
    if values.notna().any() and date_format is None:  # numbers, with some rows that are not
        bad, kind = values.isna().to_numpy(), "a number (unix seconds) like the other rows"
    else:
        text = raw.astype(str)
        if date_format is not None:
            parsed = pd.to_datetime(text, errors="coerce", utc=True, format=date_format)
            kind = f"a date in --date-format {date_format!r}"
        else:
            parsed = pd.to_datetime(text, errors="coerce", utc=True, format="ISO8601")
            kind = "a date like the other rows"
            rest = np.flatnonzero(parsed.isna().to_numpy())
            if len(rest):  # rows not in ISO 8601: any format, where day-first and month-first agree
                sub = text.iloc[rest]
                month = pd.to_datetime(sub, errors="coerce", utc=True, format="mixed")
                # a date that starts with its year is year-month-day either way (day-first would swap them)
                ask = (~sub.str.match(r"\s*\d{4}[-/.]") & month.notna()).to_numpy()
                day = pd.to_datetime(sub[ask], errors="coerce", utc=True, format="mixed", dayfirst=True)
                differ = rest[ask][(day != month[ask]).to_numpy()]
                if len(differ) and not month.isna().any():  # a row that is no date at all is named first
                    i = int(differ[0])
                    label = text.index[i]
                    raise DataError(f"{path}: column 'timestamp' {row_name(i, first)} is {raw.iloc[i]!r}, which "
                                    f"reads as {month[label]:%Y-%m-%d} month-first and {day[label]:%Y-%m-%d} "
                                    f"day-first ({len(differ)} such row(s)); name the format, e.g. --date-format "
                                    f"'%d/%m/%Y %H:%M' (day first) or '%m/%d/%Y %H:%M' (month first)")
                parsed = parsed.where(parsed.notna(), month.reindex(parsed.index))
        bad = parsed.isna().to_numpy()
        if not bad.any():  # whole seconds since 1970, whatever resolution pandas picked (ns before 3.0, us after)
            return ((parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy().astype(np.int64)
    i = int(np.flatnonzero(bad)[0])
    raise DataError(f"{path}: column 'timestamp' {row_name(i, first)} is {raw.iloc[i]!r}, not {kind} "
                    f"({int(bad.sum())} such row(s)); fix or drop them")


def sample_negatives(pos: pd.DataFrame, per_positive: int, seed: int) -> tuple[pd.DataFrame, int]:
    """For each positive row (user, item, timestamp), `per_positive` distinct items that existed at its
    time (first seen in `pos` at or before it) and that the user never interacted with, drawn uniformly
    (seeded). Returns the negative rows (the positive's user and timestamp, label 0), positive by
    positive, and how many negatives could not be drawn because no eligible item was left."""
    rng = np.random.default_rng(seed)
    user_code = pd.factorize(pos["user"])[0].astype(np.int64)
    item_code, items = pd.factorize(pos["item"])
    ts = pos["timestamp"].to_numpy()
    first_seen = pd.Series(ts).groupby(item_code).min().to_numpy()  # indexed by item code
    by_age = np.argsort(first_seen, kind="stable")                  # rank -> item code
    rank_of = np.empty_like(by_age)
    rank_of[by_age] = np.arange(len(by_age))
    n_items = len(by_age)
    eligible = np.searchsorted(first_seen[by_age], ts, side="right")  # ranks 0..eligible-1 existed at ts
    taken = np.unique(user_code * n_items + rank_of[item_code])     # (user, rank) pairs ever interacted
    chosen = np.full((len(pos), per_positive), -1, np.int64)
    for j in range(per_positive):
        todo = np.arange(len(pos))
        for _ in range(RANDOM_TRIES):
            if not len(todo):
                break
            cand = rng.integers(0, eligible[todo])
            ok = ~np.isin(user_code[todo] * n_items + cand, taken)
            ok &= ~(chosen[todo, :j] == cand[:, None]).any(axis=1)
            chosen[todo[ok], j] = cand[ok]
            todo = todo[~ok]
        for r in todo:  # few eligible items left for this user: choose among them exactly
            lo, hi = np.searchsorted(taken, [user_code[r] * n_items, (user_code[r] + 1) * n_items])
            allowed = np.setdiff1d(np.arange(eligible[r]), np.r_[taken[lo:hi] - user_code[r] * n_items,
                                                                  chosen[r, :j]])
            if len(allowed):
                chosen[r, j] = allowed[rng.integers(len(allowed))]
    row, col = np.nonzero(chosen >= 0)  # row-major: positive by positive
    neg = pd.DataFrame({"user": pos["user"].to_numpy()[row],
                        "item": np.asarray(items)[by_age[chosen[row, col]]],
                        "timestamp": ts[row], "label": np.int8(0)})
    return neg, int((chosen < 0).sum())


def prepare_log(interactions: Path, items_path: Path, *, threshold: float = 4.0, negatives: int = 0,
                seed: int = 0, valid_frac: float = 0.1, test_frac: float = 0.1, columns: str | None = None,
                item_columns: str | None = None, missing_title: str | None = None, date_format: str | None = None):
    """A log and its item table -> (splits, items, source, recipe, extra card). `columns` and
    `item_columns` are `name=column,...` specs (see LOG_COLUMNS, ITEM_COLUMNS); `missing_title` is the
    placeholder for empty titles (None: refuse them); `date_format` the timestamps' strftime format (None:
    numbers, ISO 8601 or any unambiguous format)."""
    interactions, items_path = Path(interactions), Path(items_path)
    cols = parse_columns(columns, "--columns", LOG_COLUMNS)
    icols = parse_columns(item_columns, "--item-columns", ITEM_COLUMNS)
    df = read_table(interactions, "interactions need user, item, timestamp[, rating]", cols, optional=("rating",))
    items = read_table(items_path, "the item table needs item, title", icols)
    if df.empty:
        raise DataError(f"{interactions}: no rows")
    first = first_line(interactions)
    for col in ("user", "item"):
        empty = (df[col].isna() | (df[col].astype(str).str.strip() == "")).to_numpy()
        if empty.any():
            i = int(np.flatnonzero(empty)[0])
            raise DataError(f"{interactions}: column {cols[col]!r} ({col}) {row_name(i, first)} is empty "
                            f"({int(empty.sum())} such row(s)); fill or drop them")
    rows = pd.DataFrame({"user": id_text(df["user"]), "item": id_text(df["item"]),
                         "timestamp": _timestamps(df, interactions, first, date_format)})
    rated = "rating" in df.columns
    if rated and negatives:
        raise DataError(f"{interactions}: has a rating column ({cols['rating']!r}) and --negatives {negatives} "
                        f"was given; use one of the two: drop --negatives to label rows by rating >= "
                        f"threshold, or remove the rating column to treat the log as positive-only and "
                        f"sample negatives")
    if rated:
        rows["label"] = (numeric(df, "rating", interactions, first=first) >= threshold).astype(np.int8)
        if rows["label"].nunique() < 2:
            kind = "positive" if rows["label"].iloc[0] else "negative"
            raise DataError(f"{interactions}: with --threshold {threshold:g} every row is a {kind} (label = "
                            f"{cols['rating']!r} >= {threshold:g}); a model cannot learn from one label. Set "
                            f"--threshold to where a rating means 'liked' (a 0/1 column: --threshold 1), or for "
                            f"a log of positives only, drop the rating column and pass --negatives N")
    elif negatives < 1:
        raise DataError(f"{interactions}: no rating column ({cols['rating']!r}), so the log is positive-only; "
                        f"pass --negatives N (sampled negatives per positive), or name the rating column "
                        f"with --columns rating=COLUMN")
    rows, duplicates = collapse_duplicates(rows)
    extra = {"input": {"rows": int(len(df)), "duplicate_rows_dropped": duplicates}}
    if rated:
        how = f"label = rating >= {threshold}"
    else:
        rows["label"] = np.int8(1)
        neg, skipped = sample_negatives(rows, negatives, seed)
        rows = pd.concat([rows, neg], ignore_index=True)
        extra["negatives"] = {"per_positive": negatives, "seed": seed, "sampled": int(len(neg)),
                              "skipped": skipped}
        how = (f"positive-only log, {negatives} sampled negative(s) per positive (seed {seed}): the positive's "
               f"user, time and history, an item first seen at or before that time that the user never "
               f"interacted with")
    rows["split"] = split_by_time_fraction(rows["timestamp"], valid_frac, test_frac)
    titles, untitled = item_titles(items, items_path, first_line(items_path), missing_title)
    if missing_title is not None:
        extra["missing_title"] = {"placeholder": missing_title, "items": untitled}
    splits, items_out = build_splits(rows, titles, str(items_path), history="time")
    recipe = (f"interaction log: {how}; repeated (user, item) rows collapsed to the first in time; history = "
              f"the user's positives strictly earlier in time; global time split (valid {valid_frac:.0%}, "
              f"test {test_frac:.0%} of rows, latest last); valid_small = valid.sample(frac=0.5, seed 2023)"
              + (f"; empty titles replaced by {missing_title!r}" if missing_title is not None else ""))
    return splits, items_out, f"log {interactions.name} + {items_path.name}", recipe, extra
