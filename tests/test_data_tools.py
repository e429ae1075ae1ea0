"""data_tools: the recipes on hand-checked synthetic inputs, the real CoLLM counts, and bad inputs."""
import calendar
import gzip
import io
import json
import zipfile

import numpy as np
import pandas as pd
import pytest

from helpers import run_fails, run_ok
from sasrecllm_jax.data.dataset import load_dataset
from sasrecllm_jax.errors import DataError


def ts(year, month, day=1):
    return calendar.timegm((year, month, day, 12, 0, 0))


def test_collm_ml1m_counts(ml1m_zip, tmp_path):
    out = tmp_path / "ml1m"
    run_ok("prepare", "ml1m-collm", "--source", ml1m_zip, "--out", out)  # the known zip: no --trust-pickle
    card = json.loads((out / "dataset.json").read_text())
    s = card["splits"]
    assert [s[k]["rows"] for k in ("train", "valid", "valid_small", "test")] == [33891, 10401, 5200, 7331]
    assert (s["test"]["warm_rows"], s["test"]["cold_rows"]) == (4153, 3178)
    # CoLLM's not_cold is "user and item both in train": a cold test row is almost always a new user
    assert s["test"]["causes"] == {"warm": 4153, "new_user": 3085, "new_item": 67, "both": 26}
    assert (s["train"]["users"], s["train"]["items"]) == (740, 3087)
    assert [round(s[k]["positive_rate"], 4) for k in ("train", "valid", "test")] == [0.5368, 0.5283, 0.5454]
    ds = load_dataset(out)
    row = ds.splits["train"].iloc[1]  # user 1's second row: history = [item 1]
    assert list(row["his"]) == [1] and ds.titles()[2] == "Sting, The (1973)"


def _ml1m_raw(tmp_path):
    d = tmp_path / "raw"
    d.mkdir()
    # users 50 and 7; months: 2000-05 (dropped), 2001-06 train, 2002-05 valid, 2002-10 test
    ratings = [
        (50, 300, 5, ts(2000, 5)),      # before month 14: dropped
        (50, 300, 4, ts(2001, 6)),      # train, positive
        (50, 100, 2, ts(2001, 7)),      # train, negative
        (50, 200, 5, ts(2002, 5)),      # valid, positive
        (7, 100, 5, ts(2001, 8)),       # train
        (7, 400, 3, ts(2002, 6)),       # valid, item 400 cold
        (7, 200, 4, ts(2002, 10)),      # test, item 200 not in train -> cold
        (7, 300, 1, ts(2002, 11)),      # test, warm
        (9, 100, 5, ts(2002, 12)),      # test, user 9 not in train -> cold
    ]
    (d / "ratings.dat").write_text("\n".join("::".join(map(str, r)) for r in ratings) + "\n")
    movies = [(100, "A (1990)", "Drama"), (200, "B (1991)", "Comedy"), (300, "C (1992)", "Drama"),
              (400, "D (1993)", "Horror")]
    (d / "movies.dat").write_text("\n".join("::".join(map(str, m)) for m in movies) + "\n")
    return d


def test_ml1m_recipe_by_hand(tmp_path):
    out = tmp_path / "ds"
    run_ok("prepare", "ml1m", "--source", _ml1m_raw(tmp_path), "--out", out)
    ds = load_dataset(out)
    # (user, time) order: items by first appearance: 100->1, 400->2, 200->3, 300->4
    tr, va, te = (ds.splits[k] for k in ("train", "valid", "test"))
    # raw users 7, 9, 50 -> uids 1, 2, 3 (user 9 only appears in test)
    assert tr[["uid", "iid", "label"]].values.tolist() == [[1, 1, 1], [3, 4, 1], [3, 1, 0]]
    assert va[["uid", "iid", "label"]].values.tolist() == [[1, 2, 0], [3, 3, 1]]
    assert te[["uid", "iid", "label"]].values.tolist() == [[1, 3, 1], [1, 4, 0], [2, 1, 1]]
    assert [list(h) for h in te["his"]] == [[1], [1, 3], []]
    assert [list(h) for h in va["his"]] == [[1], [4]]  # user 50's negative on item 100 is not history
    assert te["not_cold"].tolist() == [0, 1, 0] and va["not_cold"].tolist() == [0, 0]
    causes = {k: v["causes"] for k, v in json.loads((out / "dataset.json").read_text())["splits"].items()}
    assert causes["test"] == {"warm": 1, "new_user": 1, "new_item": 1, "both": 0}
    assert causes["train"] == {"warm": 3, "new_user": 0, "new_item": 0, "both": 0}
    assert causes["valid"] == {"warm": 0, "new_user": 0, "new_item": 2, "both": 0}
    assert list(ds.titles()[1:]) == ["A (1990)", "D (1993)", "B (1991)", "C (1992)"]
    assert len(ds.splits["valid_small"]) == 1


def test_ml1m_truncated_dat(tmp_path, capsys):
    d = _ml1m_raw(tmp_path)
    (d / "ratings.dat").write_text((d / "ratings.dat").read_text()[:-9])  # cut mid-line
    (d / "ratings.dat").write_text((d / "ratings.dat").read_text() + "7::100\n")
    run_fails(capsys, tmp_path / "o", "prepare", "ml1m", "--source", d, "--out", tmp_path / "o",
              match="ratings.dat: line")


def _amazon(tmp_path, users=22, items=22):
    reviews, meta = tmp_path / "Books_5.json.gz", tmp_path / "meta_Books.json.gz"
    rng = np.random.default_rng(0)
    recs = []
    for u in range(users):
        for i in range(items):
            month = 12 if (u + i) % 7 == 0 else 1 + (u * i) % 11
            recs.append({"reviewerID": f"U{u}", "asin": f"B{i}", "overall": float(rng.integers(1, 6)),
                         "unixReviewTime": ts(2017, month, 1 + (u + i) % 27)})
    recs.append({"reviewerID": "U0", "asin": "B0", "overall": 5.0, "unixReviewTime": ts(2016, 3)})  # other year
    recs.append({"reviewerID": "Ux", "asin": "B0", "overall": 5.0, "unixReviewTime": ts(2017, 3)})  # rare user
    with gzip.open(reviews, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)
    with gzip.open(meta, "wt") as f:
        f.writelines(json.dumps({"asin": f"B{i}", "title": f"Book {i}"}) + "\n" for i in range(items))
    return reviews, meta, recs


def test_amazon_recipe(tmp_path):
    reviews, meta, recs = _amazon(tmp_path)
    out = tmp_path / "ds"
    run_ok("prepare", "amazon-book", "--reviews", reviews, "--meta", meta, "--out", out)
    ds = load_dataset(out)
    kept = [r for r in recs if r["reviewerID"] != "Ux" and r["unixReviewTime"] >= ts(2017, 1)]
    dec = sorted(r["unixReviewTime"] for r in kept if r["unixReviewTime"] >= ts(2017, 12))
    assert len(ds.splits["train"]) == len(kept) - len(dec)
    assert len(ds.splits["valid"]) + len(ds.splits["test"]) == len(dec)
    assert ds.splits["valid"]["timestamp"].max() <= ds.splits["test"]["timestamp"].min()
    assert ds.splits["train"]["label"].sum() == sum(r["overall"] == 5 for r in kept if r["unixReviewTime"] < ts(2017, 12))
    assert ds.card["users"]["count"] == 22  # Ux has 1 rating: filtered


def test_amazon_truncated_gz(tmp_path, capsys):
    reviews, meta, _ = _amazon(tmp_path)
    data = reviews.read_bytes()
    reviews.write_bytes(data[: len(data) // 2])
    run_fails(capsys, tmp_path / "o", "prepare", "amazon-book", "--reviews", reviews, "--meta", meta,
              "--out", tmp_path / "o", match="Books_5.json.gz")


def _log(tmp_path, rating=True):
    rows = []
    for u in range(6):
        for k, i in enumerate(range(u, u + 8)):
            rows.append({"user": f"u{u}", "item": f"i{i % 10}", "timestamp": 1000 + 10 * k + u,
                         **({"rating": (u + k) % 5 + 1} if rating else {})})
    inter, items = tmp_path / "log.csv", tmp_path / "items.csv"
    pd.DataFrame(rows).to_csv(inter, index=False)
    pd.DataFrame({"item": [f"i{i}" for i in range(10)], "title": [f"T{i}" for i in range(10)]}).to_csv(items, index=False)
    return inter, items


def test_log_with_ratings(tmp_path, capsys):
    inter, items = _log(tmp_path)
    out = tmp_path / "ds"
    run_ok("prepare", "log", "--interactions", inter, "--items", items, "--out", out, "--threshold", 4)
    ds = load_dataset(out)
    # the summary says what a like is and how many rows are likes
    rates = ", ".join(f"{k} {v['positive_rate']:.3f}" for k, v in ds.card["splits"].items())
    assert f"labels: 1 (a like) where rating >= 4.0; share of likes: {rates}\n" in (said := capsys.readouterr().out)
    assert "hold spaces, commas or quotes" not in said
    # item ids that a command line splits are named: --own-ids cannot give them there
    pd.read_csv(items).assign(item=lambda d: d["item"].str.replace("i", "item ")).to_csv(tmp_path / "sp.csv",
                                                                                       index=False)
    pd.read_csv(inter).assign(item=lambda d: d["item"].str.replace("i", "item ")).to_csv(tmp_path / "sp_log.csv",
                                                                                       index=False)
    run_ok("prepare", "log", "--interactions", tmp_path / "sp_log.csv", "--items", tmp_path / "sp.csv", "--out",
           tmp_path / "sp")
    assert "note: 10 item id(s) hold spaces, commas or quotes (the first: 'item " in capsys.readouterr().out
    all_rows = pd.concat([ds.splits[k] for k in ("train", "valid", "test")])
    assert len(all_rows) == 48 and all_rows["label"].sum() == sum((u + k) % 5 + 1 >= 4 for u in range(6) for k in range(8))
    assert ds.splits["train"]["timestamp"].max() <= ds.splits["valid"]["timestamp"].min()
    # the source's own item ids are kept beside the iids (item iK is titled TK in the log's item table)
    ids, titles = ds.item_ids(), ds.titles()
    assert ids[0] == "" and sorted(ids[1:]) == sorted(f"i{i}" for i in range(10))
    assert all(titles[iid] == "T" + ids[iid][1:] for iid in range(1, 11))
    # and a dataset written without them (older folders, hand-made tables) has none
    assert ds.iids_of(["i3", "i0"], "--history") == [list(ids).index("i3"), list(ids).index("i0")]
    with pytest.raises(DataError, match=r"--history: item 'i10' is not an item of .*; 1 more unknown"):
        ds.iids_of(["i1", "i10", "x"], "--history")
    # and each user's: one uid per own id, the rows' uids; the folder can be prepared again over itself
    assert sorted(ds.users["user"]) == [f"u{u}" for u in range(6)] and list(ds.users["uid"]) == list(range(1, 7))
    assert ds.uids_of(["u3", ""], "--user") == [int(ds.users.set_index("user")["uid"]["u3"]), 0]
    run_ok("prepare", "log", "--interactions", inter, "--items", items, "--out", out, "--threshold", 4, "--overwrite")
    assert load_dataset(out).users.equals(ds.users)
    # a hand-made item table: missing own ids are '', whole-number floats are integers, a repeat is refused
    from sasrecllm_jax.data.dataset import write_dataset
    splits = ds.splits
    table = ds.items.assign(item=[np.nan, np.nan] + [float(i) for i in range(2, 10)])
    write_dataset(tmp_path / "hand", splits, table, source="test", recipe="hand-made")
    assert list(load_dataset(tmp_path / "hand").item_ids()) == ["", "", ""] + [str(i) for i in range(2, 10)]
    with pytest.raises(DataError, match="item id '3' names two iids"):
        write_dataset(tmp_path / "hand2", splits, table.assign(item=[3.0] * 10), source="test", recipe="hand-made")
    old = load_dataset(_without_item_column(out, tmp_path / "old"))
    assert old.item_ids() is None
    with pytest.raises(DataError, match="keeps no item ids of its source"):
        old.iids_of(["i1"], "--history")


def _without_item_column(src, dst):
    import shutil
    shutil.copytree(src, dst)
    items = pd.read_parquet(dst / "items.parquet")
    items.drop(columns="item").to_parquet(dst / "items.parquet", index=False)
    return dst


def _as_dates(seconds: pd.Series) -> pd.Series:
    """Unix seconds as date strings, in two formats (ISO with an offset, and naive text read as UTC)."""
    t = pd.to_datetime(seconds, unit="s", utc=True)
    return pd.Series([x.isoformat() if k % 2 else x.strftime("%Y-%m-%d %H:%M:%S") for k, x in enumerate(t)])


def test_log_with_dates_equals_log_with_unix_seconds(tmp_path):
    """Dates become the same unix seconds (pandas 3 parses to microseconds, pandas 2 to nanoseconds)."""
    inter, items = _log(tmp_path)
    run_ok("prepare", "log", "--interactions", inter, "--items", items, "--out", tmp_path / "secs")
    df = pd.read_csv(inter)
    df["timestamp"] = _as_dates(df["timestamp"])
    assert df["timestamp"].iloc[1].endswith("+00:00") and df["timestamp"].iloc[0] == "1970-01-01 00:16:40"
    df.to_csv(inter, index=False)
    run_ok("prepare", "log", "--interactions", inter, "--items", items, "--out", tmp_path / "dates")
    secs, dates = load_dataset(tmp_path / "secs"), load_dataset(tmp_path / "dates")
    for split in ("train", "valid", "test"):
        pd.testing.assert_frame_equal(dates.splits[split], secs.splits[split])


def test_log_with_float_ids_matches_an_item_table_of_integers(tmp_path):
    """Ids that a Parquet file holds as whole-number floats (an int column with a gap becomes float) name
    the same items as the item table's integers: the same dataset, ids kept as '7', not '7.0'."""
    inter, items = _log(tmp_path)
    df, it = pd.read_csv(inter), pd.read_csv(items)
    df["item"] = df["item"].str[1:].astype(int)
    it["item"] = it["item"].str[1:].astype(int)
    df.to_csv(tmp_path / "ints.csv", index=False)
    it.to_csv(tmp_path / "items_ints.csv", index=False)
    run_ok("prepare", "log", "--interactions", tmp_path / "ints.csv", "--items", tmp_path / "items_ints.csv",
           "--out", tmp_path / "ints", "--threshold", 4)
    df["item"] = df["item"].astype(float)
    df.to_parquet(tmp_path / "floats.parquet")
    run_ok("prepare", "log", "--interactions", tmp_path / "floats.parquet", "--items", tmp_path / "items_ints.csv",
           "--out", tmp_path / "floats", "--threshold", 4)
    a, b = load_dataset(tmp_path / "ints"), load_dataset(tmp_path / "floats")
    assert a.digest() == b.digest() and list(a.item_ids()) == list(b.item_ids())
    assert sorted(b.item_ids()[1:], key=int) == [str(i) for i in range(10)]


def test_log_in_parquet_with_a_datetime_column_equals_unix_seconds(tmp_path):
    """A datetime64 column is read as dates (to_numeric would give its nanosecond or microsecond ticks)."""
    inter, items = _log(tmp_path)
    run_ok("prepare", "log", "--interactions", inter, "--items", items, "--out", tmp_path / "secs")
    df = pd.read_csv(inter)
    df["timestamp"] = pd.to_datetime(df["timestamp"], unit="s")
    df.to_parquet(tmp_path / "log.parquet")
    run_ok("prepare", "log", "--interactions", tmp_path / "log.parquet", "--items", items, "--out", tmp_path / "pq")
    for split in ("train", "valid", "test"):
        pd.testing.assert_frame_equal(load_dataset(tmp_path / "pq").splits[split],
                                      load_dataset(tmp_path / "secs").splits[split])


def test_log_dates_that_read_two_ways_need_their_format(tmp_path, capsys):
    """01/10 is 1 October day-first and 10 January month-first: such a column is refused, naming the row and
    both readings, until --date-format says which; then it equals the same log in unix seconds."""
    inter, items = _log(tmp_path)
    run_ok("prepare", "log", "--interactions", inter, "--items", items, "--out", tmp_path / "secs")
    df = pd.read_csv(inter)
    df["timestamp"] = 86400 * 30 * df.index.to_numpy() + 1_599_999_960  # a month apart: days 1-31 and 1-12 mix
    df.to_csv(inter, index=False)
    run_ok("prepare", "log", "--interactions", inter, "--items", items, "--out", tmp_path / "secs2")
    dates = pd.to_datetime(df["timestamp"], unit="s", utc=True)
    df["timestamp"] = dates.dt.strftime("%d/%m/%Y %H:%M")  # whole minutes: the seconds part is 0 here
    assert (dates.dt.second == 0).all()
    df.to_csv(inter, index=False)
    err = run_fails(capsys, tmp_path / "dmy", "prepare", "log", "--interactions", inter, "--items", items,
                    "--out", tmp_path / "dmy", match="month-first")
    assert "day-first" in err and "--date-format '%d/%m/%Y %H:%M'" in err
    run_ok("prepare", "log", "--interactions", inter, "--items", items, "--out", tmp_path / "dmy",
           "--date-format", "%d/%m/%Y %H:%M")
    secs, dmy = load_dataset(tmp_path / "secs2"), load_dataset(tmp_path / "dmy")
    for split in ("train", "valid", "test"):
        pd.testing.assert_frame_equal(dmy.splits[split], secs.splits[split])
    run_fails(capsys, tmp_path / "ymd", "prepare", "log", "--interactions", inter, "--items", items,
              "--out", tmp_path / "ymd", "--date-format", "%Y-%m-%d", match="not a date in --date-format '%Y-%m-%d'")
    # year first is year-month-day whichever way a day-first parser would read it: not ambiguous
    df["timestamp"] = dates.dt.strftime("%Y-%m-%d %H:%M:%S UTC")
    df.to_csv(inter, index=False)
    run_ok("prepare", "log", "--interactions", inter, "--items", items, "--out", tmp_path / "ymd")
    pd.testing.assert_frame_equal(load_dataset(tmp_path / "ymd").splits["test"], secs.splits["test"])


def test_log_files_that_are_not_as_read_say_what_to_change(tmp_path, capsys):
    inter, items = _log(tmp_path)
    df = pd.read_csv(inter)
    out = tmp_path / "ds"
    args = ["prepare", "log", "--items", items, "--out", out]
    semi = tmp_path / "semi.csv"
    df.to_csv(semi, index=False, sep=";")
    run_fails(capsys, out, *args, "--interactions", semi, match="it looks ';'-separated, but a .csv file is read "
              "comma-separated: save it with commas, or name it .txt")
    latin = tmp_path / "items_latin1.csv"
    latin.write_bytes("item,title\n".encode() + "".join(f"i{i},Caf\xe9 {i}\n" for i in range(10)).encode("latin-1"))
    run_fails(capsys, out, "prepare", "log", "--interactions", inter, "--items", latin, "--out", out,
              match="not UTF-8 text")
    empty = df.astype(str)
    empty.loc[3, "user"] = ""
    empty.to_csv(tmp_path / "empty.csv", index=False)
    run_fails(capsys, out, *args, "--interactions", tmp_path / "empty.csv",
              match="column 'user' (user) line 5 is empty (1 such row(s))")
    spaced = tmp_path / "spaced.csv"  # spaces after the commas (header and cells) are not part of the values
    (spaced).write_text(", ".join(df.columns) + "\n" + "\n".join(", ".join(map(str, r)) for r in df.values) + "\n")
    run_ok(*args, "--interactions", spaced, "--threshold", 4)
    run_ok("prepare", "log", "--items", items, "--out", tmp_path / "plain", "--interactions", inter)
    assert load_dataset(out).splits["test"].equals(load_dataset(tmp_path / "plain").splits["test"])


def test_log_with_one_label_is_refused(tmp_path, capsys):
    """A 0/1 column under the default --threshold 4 labels every row 0: refused, saying what to set."""
    inter, items = _log(tmp_path)
    df = pd.read_csv(inter)
    df["rating"] = df["rating"] % 2
    df.to_csv(inter, index=False)
    run_fails(capsys, tmp_path / "ds", "prepare", "log", "--interactions", inter, "--items", items,
              "--out", tmp_path / "ds", match="every row is a negative")
    run_ok("prepare", "log", "--interactions", inter, "--items", items, "--out", tmp_path / "ds", "--threshold", 1)


def test_overwrite_replaces_only_a_dataset_folder(tmp_path, capsys):
    inter, items = _log(tmp_path)
    args = ["prepare", "log", "--interactions", inter, "--items", items, "--threshold", 4, "--overwrite"]
    run_ok(*args, "--out", tmp_path / "ds")
    run_ok(*args, "--out", tmp_path / "ds")  # a dataset folder is replaced
    # a folder holding anything else (here the inputs themselves) is not, and keeps every file
    run_fails(capsys, tmp_path, *args, "--out", tmp_path, match="is not a dataset folder", out_was_there=True)
    assert inter.exists() and items.exists() and (tmp_path / "ds" / "dataset.json").exists()
    (tmp_path / "ds" / "notes.txt").write_text("mine")
    run_fails(capsys, tmp_path / "ds", *args, "--out", tmp_path / "ds", match="it holds notes.txt", out_was_there=True)
    assert (tmp_path / "ds" / "notes.txt").read_text() == "mine"


def test_log_positive_only_negatives(tmp_path, capsys):
    inter, items = _log(tmp_path, rating=False)
    out = tmp_path / "ds"
    run_ok("prepare", "log", "--interactions", inter, "--items", items, "--out", out, "--negatives", 1, "--seed", 3)
    ds = load_dataset(out)
    all_rows = pd.concat([ds.splits[k] for k in ("train", "valid", "test")])
    # early positives have few items that existed then and the user never touched: some get none, counted
    skipped = ds.card["negatives"]["skipped"]
    assert 0 < skipped < 10 and ds.card["negatives"]["sampled"] == 48 - skipped
    assert f"note: {skipped} of the 48 negatives asked for were not drawn" in capsys.readouterr().out
    assert len(all_rows) == 96 - skipped and all_rows["label"].sum() == 48
    # a sampled negative is never an item the user interacted with
    pos = all_rows[all_rows.label == 1].groupby("uid")["iid"].agg(set)
    neg = all_rows[all_rows.label == 0]
    assert not any(i in pos[u] for u, i in zip(neg.uid, neg.iid))
    out2 = tmp_path / "ds2"
    run_ok("prepare", "log", "--interactions", inter, "--items", items, "--out", out2, "--negatives", 1, "--seed", 3)
    assert load_dataset(out2).splits["test"].equals(ds.splits["test"])  # seeded: same negatives


@pytest.mark.parametrize("case,match", [
    ("missing_column", "missing column(s) timestamp"),
    ("bad_rating", "column 'rating' line 4 is 'five', not a number"),
    ("unknown_item", "item 'i99'"),
    ("positive_only", "--negatives N"),
    ("empty_split", "split is empty"),
    ("bad_number", "column 'timestamp' line 5 is 'soon', not a number (unix seconds) like the other rows (1 such"),
    ("bad_date", "column 'timestamp' line 6 is 'yesterday', not a date like the other rows"),
])
def test_log_bad_inputs(tmp_path, capsys, case, match):
    inter, items = _log(tmp_path)
    df = pd.read_csv(inter)
    if case == "missing_column":
        df = df.drop(columns="timestamp")
    elif case == "bad_rating":
        df["rating"] = df["rating"].astype(object)
        df.loc[2, "rating"] = "five"
    elif case == "unknown_item":
        df.loc[5, "item"] = "i99"
    elif case == "positive_only":
        df = df.drop(columns="rating")
    elif case == "empty_split":
        df["timestamp"] = 5
    elif case == "bad_number":
        df["timestamp"] = df["timestamp"].astype(object)
        df.loc[3, "timestamp"] = "soon"
    elif case == "bad_date":
        df["timestamp"] = _as_dates(df["timestamp"])
        df.loc[4, "timestamp"] = "yesterday"
    df.to_csv(inter, index=False)
    out = tmp_path / "out"
    run_fails(capsys, out, "prepare", "log", "--interactions", inter, "--items", items, "--out", out, match=match)


def _collm_zip(tmp_path, mutate=None):
    frames = {}
    base = pd.DataFrame({"uid": [1, 1, 2], "iid": [1, 2, 1], "label": [1, 0, 1], "timestamp": [10, 20, 30],
                         "his": [[0], [0, 1], [0]], "his_title": [[""], ["", "A"], [""]],
                         "title": ["A", "B", "A"], "flag": [1.0] * 3, "not_cold": [1, 1, 1]})
    for s in ("train", "valid", "test", "valid_small"):
        frames[s] = mutate(base.copy()) if (mutate and s == "test") else base.copy()
    z = tmp_path / "c.zip"
    with zipfile.ZipFile(z, "w") as f:
        for s, df in frames.items():
            buf = io.BytesIO()
            df.to_pickle(buf)
            f.writestr(f"ml-1m/{s}_ood2.pkl", buf.getvalue())
    return z


@pytest.mark.parametrize("case,match", [
    ("no_trust", "--trust-pickle"),
    ("corrupt_zip", "not a readable zip"),
    ("negative_id", "column 'uid' row 0 is -3, below 1"),
    ("non_integer_id", "column 'iid' row 1 is 2.5, not an integer"),
    ("unknown_history_item", "names item 77"),
    ("empty_split", "test_ood2.pkl: the split is empty"),
    ("exists", "exists; choose another --out or pass --overwrite"),
])
def test_collm_bad_inputs(tmp_path, capsys, case, match):
    mutate = {
        "negative_id": lambda d: d.assign(uid=[-3, 1, 2]),
        "non_integer_id": lambda d: d.assign(iid=[1, 2.5, 1]),
        "unknown_history_item": lambda d: d.assign(his=[[0], [0, 77], [0]], his_title=[[""], [""], [""]]),
        "empty_split": lambda d: d.iloc[:0],
    }.get(case)
    z = _collm_zip(tmp_path, mutate)
    if case == "corrupt_zip":
        z.write_bytes(b"PK\x03\x04 not really a zip")
    out = tmp_path / ("exists" if case == "exists" else "out")
    if case == "exists":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    args = ["prepare", "ml1m-collm", "--source", z, "--out", out] + ([] if case == "no_trust" else ["--trust-pickle"])
    run_fails(capsys, out, *args, match=match, out_was_there=case == "exists")
    if case == "exists":
        assert (out / "keep.txt").read_text() == "mine"  # nothing lost


def test_overwrite_replaces(tmp_path):
    z = _collm_zip(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    run_ok("prepare", "ml1m-collm", "--source", z, "--trust-pickle", "--out", out, "--overwrite")
    assert load_dataset(out).card["splits"]["test"]["rows"] == 3
