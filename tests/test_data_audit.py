"""data_tools on positive-only logs: sampled negatives, the leak audit, held-out items, causes, clean input."""
import json

import numpy as np
import pandas as pd
import pytest

from helpers import run_fails, run_ok
from data_tools.cold import hold_out_items
from data_tools.named import prepare_named
from sasrecllm_jax.data.dataset import causes, load_dataset
from sasrecllm_jax.errors import DataError


def positive_log(tmp_path, users=500, items=400, per_user=20, seed=0, names=("user", "item", "timestamp")):
    """A positive-only log with popular and rare items, items released over time, and per-user times."""
    rng = np.random.default_rng(seed)
    release = np.sort(rng.integers(0, 50_000, items))          # item k appears from release[k] on
    weight = 1.0 / np.arange(1, items + 1) ** 0.8
    rows = []
    for u in range(users):
        times = np.sort(rng.choice(np.arange(100_000), per_user, replace=False)) + 10_000
        picked = set()
        for t in times:
            alive = np.flatnonzero(release <= t)
            p = weight[alive] / weight[alive].sum()
            i = int(rng.choice(alive, p=p))
            if i not in picked:
                picked.add(i)
                rows.append((f"u{u}", f"i{i}", int(t)))
    user, item, time = names
    inter, table = tmp_path / "log.csv", tmp_path / "items.csv"
    pd.DataFrame(rows, columns=[user, item, time]).to_csv(inter, index=False)
    pd.DataFrame({"item": [f"i{i}" for i in range(items)], "title": [f"Book {i}" for i in range(items)]}
                 ).to_csv(table, index=False)
    return inter, table


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    """The positive-only log prepared with 1 negative per positive (valid and test 30% each, so that
    valid_small is large enough to read an AUC to +- 0.01)."""
    d = tmp_path_factory.mktemp("sampled")
    inter, table = positive_log(d)
    out = d / "ds"
    run_ok("prepare", "log", "--interactions", inter, "--items", table, "--negatives", 1, "--seed", 0,
           "--valid-frac", 0.3, "--test-frac", 0.3, "--out", out)
    return inter, table, out


def test_audit_shortcuts_at_chance(sampled):
    card = load_dataset(sampled[2]).card
    audit = card["audit"]
    assert audit["warnings"] == []
    for split, s in audit["splits"].items():
        assert s["rows"] > 2500, split
        for k in ("history_length", "timestamp", "position", "target_in_history", "target_is_last"):
            assert abs(s["auc"][k] - 0.5) <= 0.03, (split, k, s["auc"][k])
        assert s["auc"]["popularity"] > 0.55  # popularity is signal: positives are popular items
    assert card["negatives"]["skipped"] <= 2  # an early positive of a user who had every item of its time


def test_negative_is_the_same_impression(sampled):
    ds = load_dataset(sampled[2])
    rows = pd.concat([ds.splits[k] for k in ("train", "valid", "test")], ignore_index=True)
    pos, neg = rows[rows.label == 1], rows[rows.label == 0]
    assert len(neg) == len(pos) - ds.card["negatives"]["skipped"]
    by_time = {(u, t): (i, list(h)) for u, t, i, h in zip(pos.uid, pos.timestamp, pos.iid, pos.his)}
    assert len(by_time) == len(pos)  # one positive per (user, time) in this log
    first_seen = pos.groupby("iid")["timestamp"].min()
    touched = pos.groupby("uid")["iid"].agg(set)
    assert len(neg) > 8000
    for u, t, i, h in zip(neg.uid, neg.timestamp, neg.iid, neg.his):
        p_item, p_his = by_time[(u, t)]                     # the positive of the same user and time
        assert list(h) == p_his and p_item not in p_his     # the same history, never the positive itself
        assert first_seen[i] <= t                            # the item existed then
        assert i not in touched[u]                           # and the user never interacted with it
    # strictly earlier positives only
    for u, t, h in zip(pos.uid[:200], pos.timestamp[:200], pos.his[:200]):
        earlier = pos[(pos.uid == u) & (pos.timestamp < t)].sort_values("timestamp")["iid"].tolist()
        assert list(h) == earlier
    # items released late appear in test only: natural new-item rows exist
    c = ds.card["splits"]["test"]["causes"]
    assert c["new_item"] + c["both"] > 0


def test_negatives_seeded(sampled, tmp_path):
    inter, table, out = sampled
    again = tmp_path / "again"
    run_ok("prepare", "log", "--interactions", inter, "--items", table, "--negatives", 1, "--seed", 0,
           "--valid-frac", 0.3, "--test-frac", 0.3, "--out", again)
    for split in ("train", "test"):
        pd.testing.assert_frame_equal(load_dataset(again).splits[split], load_dataset(out).splits[split])


def test_cold_items_removes_exactly_the_chosen(sampled, tmp_path):
    inter, table, base_dir = sampled
    out = tmp_path / "cold"
    run_ok("prepare", "log", "--interactions", inter, "--items", table, "--negatives", 1, "--seed", 0,
           "--valid-frac", 0.3, "--test-frac", 0.3, "--cold-items", 0.25, "--out", out)
    base, ds = load_dataset(base_dir), load_dataset(out)
    info = ds.card["cold_items"]
    chosen = set(info["iids"])
    vt = set(base.splits["valid"]["iid"]) | set(base.splits["test"]["iid"])
    assert len(chosen) == info["items"] == round(0.25 * len(vt)) and chosen <= vt
    assert "cold items: a seeded share 0.25 (seed 0)" in ds.card["recipe"]
    train, old = ds.splits["train"], base.splits["train"]
    assert not train["iid"].isin(chosen).any()
    assert not any(chosen & set(h.tolist()) for h in train["his"])
    kept = old[~old["iid"].isin(chosen)].reset_index(drop=True)
    assert info["train_rows_dropped"] == len(old) - len(kept) > 0
    pd.testing.assert_frame_equal(train[["uid", "iid", "label", "timestamp"]], kept[["uid", "iid", "label", "timestamp"]])
    assert [h.tolist() for h in train["his"]] == [[i for i in h if i not in chosen] for h in kept["his"]]
    for split in ("valid", "valid_small", "test"):  # valid/test rows are kept, histories and all
        new, was = ds.splits[split], base.splits[split]
        pd.testing.assert_frame_equal(new.drop(columns="not_cold"), was.drop(columns="not_cold"))
        warm = new["uid"].isin(train["uid"]) & new["iid"].isin(train["iid"])
        assert (new["not_cold"] == warm.astype(np.int8)).all()
        assert not new.loc[new["iid"].isin(chosen), "not_cold"].any()
    c = ds.card["splits"]["test"]["causes"]
    held = ds.splits["test"]["iid"].isin(chosen).sum()
    assert c["new_item"] + c["both"] >= held > 0


def test_causes_by_hand():
    """Train: users 1, 2 on items 9, 10, 11. Each test row has one cause; holding out 10 or 11 (the seed
    picks one) makes that item new, and the counts come out the same either way."""
    his = lambda *h: np.array(h, np.int64)
    train = pd.DataFrame({"uid": [1, 1, 1, 2, 2], "iid": [9, 10, 11, 10, 11], "label": 1,
                          "timestamp": [0, 1, 2, 1, 2], "his": [his(), his(9), his(9, 10), his(), his(10)],
                          "not_cold": 1})
    test = pd.DataFrame({"uid": [1, 3, 1, 3, 2], "iid": [10, 10, 12, 12, 11], "label": [1, 0, 1, 0, 1],
                         "timestamp": 5, "his": [his(10, 11)] * 5, "not_cold": [1, 0, 0, 0, 1]})
    assert causes(test, train) == {"warm": 2, "new_user": 1, "new_item": 1, "both": 1}
    assert causes(train, train) == {"warm": 5, "new_user": 0, "new_item": 0, "both": 0}
    sym = pd.DataFrame({"uid": [1, 2, 3, 3], "iid": [10, 11, 10, 11], "label": 1, "timestamp": 5,
                        "his": [his(10, 11)] * 4, "not_cold": [1, 1, 0, 0]})
    splits = {"train": train, "valid": sym, "valid_small": sym.iloc[:2], "test": sym}
    out, info = hold_out_items(splits, 0.5, seed=0)
    (gone,) = info["iids"]
    stay = 21 - gone
    assert out["train"]["iid"].tolist() == [9, stay, stay] and info["train_rows_dropped"] == 2
    assert [h.tolist() for h in out["train"]["his"]] == [[], [9], []]
    # user 1 (or 2) keeps the other item; user 3 is new
    assert causes(out["test"], out["train"]) == {"warm": 1, "new_user": 1, "new_item": 1, "both": 1}
    assert out["test"]["not_cold"].tolist() == [int(i == stay and u != 3) for u, i in zip(sym.uid, sym.iid)]
    assert [h.tolist() for h in out["test"]["his"]] == [[10, 11]] * 4  # valid/test histories kept


def _mapped_log(tmp_path):
    """A rated log under its own column names, with user a's item x rated twice (the later row differs)."""
    inter, table = tmp_path / "mine.csv", tmp_path / "titles.csv"
    rows = [("a", "x", 100, 5), ("a", "y", 200, 1), ("a", "x", 300, 1), ("b", "x", 150, 4), ("b", "z", 250, 5),
            ("c", "y", 400, 5), ("c", "z", 500, 2), ("d", "x", 600, 5), ("d", "y", 700, 4), ("e", "z", 800, 5)]
    pd.DataFrame(rows, columns=["user_id", "item_id", "ts", "stars"]).to_csv(inter, index=False)
    pd.DataFrame({"item_id": ["x", "y", "z"], "name": ["X", "Y", "Z"]}).to_csv(table, index=False)
    return inter, table, rows


def test_column_mapping_and_duplicates(tmp_path):
    inter, table, rows = _mapped_log(tmp_path)
    out = tmp_path / "mapped"
    run_ok("prepare", "log", "--interactions", inter, "--items", table, "--columns",
           "user=user_id,item=item_id,timestamp=ts,rating=stars", "--item-columns", "item=item_id,title=name",
           "--valid-frac", 0.2, "--test-frac", 0.2, "--out", out)
    ds = load_dataset(out)
    assert ds.card["input"] == {"rows": 10, "duplicate_rows_dropped": 1}
    every = pd.concat([ds.splits[k] for k in ("train", "valid", "test")])
    assert len(every) == 9
    a_x = every[(every.uid == 1) & (every.iid == 1)]  # user a, item x: the first in time (rated 5) is kept
    assert a_x["timestamp"].tolist() == [100] and a_x["label"].tolist() == [1]
    assert not any(i in h.tolist() for i, h in zip(every.iid, every.his))  # no item in its own history
    assert list(ds.titles()[1:]) == ["X", "Y", "Z"]
    # the same log under the canonical names gives the same tables
    pd.read_csv(inter).rename(columns={"user_id": "user", "item_id": "item", "ts": "timestamp",
                                       "stars": "rating"}).to_csv(tmp_path / "log.csv", index=False)
    pd.read_csv(table).rename(columns={"item_id": "item", "name": "title"}).to_csv(tmp_path / "items.csv", index=False)
    run_ok("prepare", "log", "--interactions", tmp_path / "log.csv", "--items", tmp_path / "items.csv",
           "--valid-frac", 0.2, "--test-frac", 0.2, "--out", tmp_path / "plain")
    plain = load_dataset(tmp_path / "plain")
    for split in ("train", "valid", "test"):
        pd.testing.assert_frame_equal(plain.splits[split], ds.splits[split])


def test_missing_title_placeholder(tmp_path):
    inter, table = positive_log(tmp_path, users=30, items=20, per_user=6)
    items = pd.read_csv(table)
    items.loc[3, "title"] = ""
    items.to_csv(table, index=False)
    out = tmp_path / "ds"
    run_ok("prepare", "log", "--interactions", inter, "--items", table, "--negatives", 1,
           "--missing-title", "(untitled)", "--out", out)
    ds = load_dataset(out)
    assert ds.card["missing_title"] == {"placeholder": "(untitled)", "items": 1}
    assert "empty titles replaced by '(untitled)'" in ds.card["recipe"]
    assert "i3" in set(pd.read_csv(inter)["item"]) and "(untitled)" in set(ds.items["title"])


@pytest.mark.parametrize("case,match", [
    ("ratings_and_negatives", "use one of the two: drop --negatives"),
    ("empty_title", "1 item(s) have an empty or missing title (the first at line 4, item 'i2'); fill them in, "
                    "or pass --missing-title"),
    ("unknown_column", "missing column(s) user_id (user)"),
    ("unknown_name", "unknown name 'usr'; the names are user, item, timestamp, rating"),
    ("malformed_columns", "'user' is not NAME=COLUMN"),
    ("frac_too_big", "--cold-items 1.5: the share"),
    ("frac_negative", "--cold-items -0.1: the share"),
    ("frac_not_a_number", "--cold-items many: the share"),
    ("parquet_row", "column 'timestamp' row 3 is 'soon'"),
    ("repeated_item", "item 'i1' is listed again at line 22"),
])
def test_bad_inputs(tmp_path, capsys, case, match):
    inter, table = positive_log(tmp_path, users=30, items=20, per_user=6)
    args = ["--negatives", 1]
    if case == "ratings_and_negatives":
        df = pd.read_csv(inter)
        df.assign(rating=5).to_csv(inter, index=False)
    elif case == "empty_title":
        pd.read_csv(table).assign(title=lambda d: d.title.where(d.index != 2, "")).to_csv(table, index=False)
    elif case == "unknown_column":
        args += ["--columns", "user=user_id"]
    elif case == "unknown_name":
        args += ["--columns", "usr=user"]
    elif case == "malformed_columns":
        args += ["--columns", "user"]
    elif case.startswith("frac"):
        args += ["--cold-items", {"frac_too_big": "1.5", "frac_negative": "-0.1", "frac_not_a_number": "many"}[case]]
    elif case == "parquet_row":
        df = pd.read_csv(inter).astype({"timestamp": str})
        df.loc[3, "timestamp"] = "soon"
        inter = tmp_path / "log.parquet"
        df.to_parquet(inter)
    elif case == "repeated_item":
        items = pd.read_csv(table)
        pd.concat([items, items.iloc[[1]]]).to_csv(table, index=False)
    out = tmp_path / "out"
    run_fails(capsys, out, "prepare", "log", "--interactions", inter, "--items", table, *args, "--out", out,
              match=match)


def test_audit_command(sampled, capsys, tmp_path):
    import shutil
    d = tmp_path / "copy"
    shutil.copytree(sampled[2], d)
    card = json.loads((d / "dataset.json").read_text())
    before = (d / "dataset.json").read_bytes()
    run_ok("audit", d)
    printed = capsys.readouterr().out
    assert "his_len" in printed and "valid_small" in printed and "warning" not in printed
    assert (d / "dataset.json").read_bytes() == before  # nothing rewritten unless asked
    card.pop("audit")
    (d / "dataset.json").write_text(json.dumps(card))
    run_ok("audit", d, "--write")
    assert json.loads((d / "dataset.json").read_text())["audit"] == load_dataset(sampled[2]).card["audit"]


def test_amazon_books_named_recipe(tmp_path):
    """`prepare amazon-books --source DIR`: the published column names, 1 negative, the placeholder title."""
    inter, table = positive_log(tmp_path, users=60, items=40, per_user=8,
                                names=("user_id", "item_id", "timestamp"))
    items = pd.read_csv(table).rename(columns={"item": "item_id"})
    items.loc[0, "title"] = ""
    src = tmp_path / "books"
    src.mkdir()
    inter.rename(src / "interactions.csv")
    items.to_csv(src / "items.csv", index=False)
    out = tmp_path / "ab"
    run_ok("prepare", "amazon-books", "--source", src, "--out", out)
    ds = load_dataset(out)
    assert ds.card["negatives"]["per_positive"] == 1 and ds.card["missing_title"]["items"] == 1
    assert ds.card["recipe"].startswith("Amazon Books interaction log: positive-only log, 1 sampled negative")
    with pytest.raises(DataError, match="not a named dataset"):
        prepare_named("nope")
