"""What a user reads after a run: scoring a finished run, the plots, the experiment summary."""
import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from helpers import ONE_SHAPE, smoke_config, synthetic_dataset
from sasrecllm_jax.errors import ConfigError
from sasrecllm_jax.plots import curves, warm_cold
from sasrecllm_jax.experiments import __main__ as experiments_cli, claims as claims_lib, grid as grid_lib, seeds
from sasrecllm_jax.experiments import summary as summary_lib
from sasrecllm_jax.run_folder import files as run_files
from sasrecllm_jax.run_folder.metrics_log import read_metrics
from sasrecllm_jax.data.pipeline import SplitData
from sasrecllm_jax.metrics import paired_auc_means_test
from sasrecllm_jax.run_folder.scores import load_scores, save_scores
from sasrecllm_jax.score import Recommender, main as score_main
from sasrecllm_jax.train.phase import token_counts
from sasrecllm_jax.train.run import train_and_evaluate


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("exp")
    dataset = synthetic_dataset(root / "data")
    out = root / "results"
    for method in ("sasrec", "icl"):  # 30 items, 12 per user: rank each test positive among 10 candidates
        train_and_evaluate(smoke_config(dataset, f"train.method={method}", ONE_SHAPE,
                                        "eval.ranking_negatives=9", "eval.ranking_ks=[1, 3]"), out / "runs" / method)
    one_phase = "[{name: h, trainable: [mapper], prompt: hybrid, max_steps: 3, lr: {mapper: 0.01}}]"
    train_and_evaluate(smoke_config(dataset, "train.method=sasrecllm", f"train.phases={one_phase}",
                                    ONE_SHAPE), root / "hybrid")  # a hybrid run, quickly
    return dataset, out


@pytest.mark.parametrize("method", ["sasrec", "icl"])
def test_scoring_a_run_matches_its_evaluation(runs, method):
    from sasrecllm_jax.data.dataset import load_dataset
    from sasrecllm_jax.evaluate import score_split
    dataset, out = runs
    rec = Recommender(out / "runs" / method)
    test = load_dataset(dataset).splits["test"].iloc[:6]
    ours = rec.score(test["uid"], list(test["his"]), test["iid"])
    data = rec.assembly.split("test", rec.prompt)
    reference = score_split(rec.scorer, rec.params, data, 64, rec.cfg.data.pad_multiple, rec.prompt != "none")[:6]
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    ranked = rec.rank(int(test["uid"].iloc[0]), list(test["his"].iloc[0]), [1, 2, 3])
    assert list(ranked["score"]) == sorted(ranked["score"], reverse=True) and set(ranked["iid"]) == {1, 2, 3}
    own = rec.assembly.dataset.item_ids()
    assert list(ranked["item"]) == [own[i] for i in ranked["iid"]] and all(i.startswith("i") for i in ranked["item"])
    np.testing.assert_allclose(ranked["p_like"], 1 / (1 + np.exp(-ranked["score"])))


def test_ranking_metrics_match_scoring_the_candidates(runs):
    """results.json's HR@K / NDCG@K equal ranking.py's on the candidates scored apart with the finished model
    (each test positive against 9 items its user never interacted with); an LLM run on the CPU says why it
    did not rank; two runs ranked on the same candidates are paired per positive."""
    from sasrecllm_jax.compare import compare
    from sasrecllm_jax.data.dataset import load_dataset
    from sasrecllm_jax.ranking import hit_rate_and_ndcg, sample_candidates
    dataset, out = runs
    results = json.loads((out / "runs" / "sasrec" / "results.json").read_text())
    ranking = results["ranking"]
    assert (ranking["negatives"], ranking["ks"], ranking["skipped_positives"]) == (9, [1, 3], 0)
    ds = load_dataset(dataset)
    test = ds.splits["test"]
    pos = test[test.label == 1]
    seen = {}
    for name in ("train", "valid", "test"):
        for u, i in zip(ds.splits[name].uid, ds.splits[name].iid):
            seen.setdefault(int(u), set()).add(int(i))
    candidates = sample_candidates(pos.uid, pos.iid, seen, ds.num_items, 9, 0)
    rec = Recommender(out / "runs" / "sasrec")
    scores = rec.score(np.repeat(pos.uid.to_numpy(), 10), [h for h in pos.his for _ in range(10)],
                       candidates.reshape(-1)).reshape(-1, 10)
    want = hit_rate_and_ndcg(scores, (1, 3))
    assert ranking["test"]["all"]["n"] == len(pos)
    for metric, value in want.items():
        assert ranking["test"]["all"][metric] == pytest.approx(value, abs=1e-9), metric
    assert 0 < want["hr@3"] < 1
    icl = json.loads((out / "runs" / "icl" / "results.json").read_text())["ranking"]
    assert "skipped" in icl and "eval.cpu_ranking_llm" in icl["skipped"]
    same = compare(out / "runs" / "sasrec", out / "runs" / "sasrec")["all"]  # paired at the largest cut-off kept
    assert same["HR@3"]["n"] == len(pos) and same["HR@3"]["diff"] == 0 and same["NDCG@3"]["auc_b"] == want["ndcg@3"]


def test_recommend_retrieves_with_the_encoder_and_reranks_with_the_hybrid(runs, tmp_path, capsys):
    """recommend: K distinct items the user never interacted with, with their titles; the encoder's best
    `retrieve` items, ordered by the hybrid's own score; the CLI writes them as JSON; bad input is one line."""
    from sasrecllm_jax.data.dataset import load_dataset
    from sasrecllm_jax.recommend import encoder_scores, main as recommend_main, recommend, unseen_items
    dataset, out = runs
    ds = load_dataset(dataset)
    rec = Recommender(out.parent / "hybrid")
    user, history = 3, [int(i) for i in ds.splits["train"].query("uid == 3 and label == 1").iid][:4]
    top = recommend(rec, history, k=5, user=user, retrieve=8)
    mine = set(pd.concat([d[d.uid == user] for d in ds.splits.values()]).iid)
    assert len(top) == 5 and top.iid.is_unique and not set(top.iid) & (mine | set(history))
    assert list(top.title) == [ds.titles()[i] for i in top.iid]
    # beside each iid, the item's own id in the log it was prepared from (log item iK is titled "Film K (...)")
    assert list(top.columns[:3]) == ["rank", "iid", "item"]
    assert all(title.startswith(f"Film {item[1:]} (") for item, title in zip(top.item, top.title))
    items = unseen_items(rec, user, history)
    retrieved = set(items[np.argsort(-encoder_scores(rec, user, history, items), kind="stable")[:8]])
    assert set(top.iid) <= retrieved and list(top.score) == sorted(top.score, reverse=True)
    # the same rows in other batches and packs: equal up to float rounding
    np.testing.assert_allclose(top.score, rec.score([user] * 5, [history] * 5, top.iid), rtol=1e-6, atol=1e-6)
    assert recommend_main(["--run", str(out.parent / "hybrid"), "--history", " ".join(map(str, history)),
                           "--k", "3", "--out", str(tmp_path / "top.json")]) == 0
    assert len(json.loads((tmp_path / "top.json").read_text())) == 3
    assert recommend_main(["--run", str(out / "runs" / "icl"), "--history", "1"]) == 2
    assert "no ID encoder to retrieve items with" in capsys.readouterr().err
    assert recommend_main(["--run", str(out / "runs" / "sasrec"), "--history", "1 x"]) == 2
    assert "give item ids separated by spaces" in capsys.readouterr().err
    # the same request in the source's own item ids gives the same list
    own = ds.item_ids()
    assert recommend_main(["--run", str(out.parent / "hybrid"), "--own-ids", "--history", " ".join(own[history]),
                           "--k", "3", "--out", str(tmp_path / "own.json")]) == 0
    assert (tmp_path / "own.json").read_text() == (tmp_path / "top.json").read_text()
    # a known user by their own id: the same list as by uid (their rows in the dataset are left out alike)
    me = ds.users.set_index("uid")["user"][user]
    for flags, name in ((["--user", str(user), "--history", "1"], "by_uid"),
                        (["--own-ids", "--user", me, "--history", own[1]], "by_own")):
        assert recommend_main(["--run", str(out / "runs" / "sasrec"), "--k", "4", *flags,
                               "--out", str(tmp_path / f"{name}.json")]) == 0
    assert len(json.loads((tmp_path / "by_own.json").read_text())) == 4
    assert (tmp_path / "by_uid.json").read_text() == (tmp_path / "by_own.json").read_text()
    # without --history a known user is asked with what the dataset knows they liked, oldest first
    rec_s = Recommender(out / "runs" / "sasrec")
    rows = pd.concat([d[(d.uid == user) & (d.label == 1)] for d in ds.splits.values()])
    rows = rows.sort_values("timestamp", kind="stable")
    liked = rec_s.liked_items(user)
    assert liked == list(dict.fromkeys(reversed(rows.iid.tolist())))[::-1] and len(liked) > 1
    capsys.readouterr()
    assert recommend_main(["--run", str(out / "runs" / "sasrec"), "--user", str(user), "--k", "4",
                           "--out", str(tmp_path / "known.json")]) == 0
    assert f"user {user}'s {len(liked)} liked item(s) in the dataset are their history" in capsys.readouterr().err
    assert recommend_main(["--run", str(out / "runs" / "sasrec"), "--user", str(user), "--k", "4", "--history",
                           " ".join(map(str, liked)), "--out", str(tmp_path / "given.json")]) == 0
    assert (tmp_path / "known.json").read_text() == (tmp_path / "given.json").read_text()


def test_score_cli_rows(runs, tmp_path, capsys):
    """--rows FILE --out: every row scored as Recommender.score scores it, with p_like and the item's own id
    beside its iid; the file's other columns kept."""
    from sasrecllm_jax.data.dataset import load_dataset
    dataset, out = runs
    test = load_dataset(dataset).splits["test"].iloc[:5]
    rows = pd.DataFrame({"uid": test["uid"], "history": [" ".join(map(str, h)) for h in test["his"]],
                         "iid": test["iid"], "note": list("abcde")})
    rows.to_csv(tmp_path / "rows.csv", index=False)
    run = out / "runs" / "sasrec"
    assert score_main(["--run", str(run), "--rows", str(tmp_path / "rows.csv"), "--out", str(tmp_path / "s.csv")]) == 0
    got = pd.read_csv(tmp_path / "s.csv")
    assert list(got.columns) == ["uid", "history", "iid", "item", "note", "score", "p_like"]
    rec = Recommender(run)
    np.testing.assert_allclose(got["score"], rec.score(test["uid"], list(test["his"]), test["iid"]), atol=1e-5)
    np.testing.assert_allclose(got["p_like"], 1 / (1 + np.exp(-got["score"])), atol=1e-6)
    assert list(got["item"]) == list(rec.assembly.dataset.item_ids()[test["iid"]]) and list(got["note"]) == list("abcde")
    # a file with a column of its own named item keeps it, and says that the items' own ids are not added
    rows.assign(item="mine").to_csv(tmp_path / "item.csv", index=False)
    assert score_main(["--run", str(run), "--rows", str(tmp_path / "item.csv"), "--out", str(tmp_path / "i.csv")]) == 0
    assert set(pd.read_csv(tmp_path / "i.csv")["item"]) == {"mine"}
    assert "has its own column 'item', kept as it is" in capsys.readouterr().err
    # --own-ids: the same rows written in the source's own ids (log user uK, item iK) score the same, the
    # file's ids kept as user and item; an empty uid cell is a user the dataset does not know (uid 0)
    ds = rec.assembly.dataset
    own, users = ds.item_ids(), dict(zip(ds.users["uid"], ds.users["user"]))
    assert sorted(users.values(), key=lambda u: int(u[1:])) == [f"u{k}" for k in range(40)]
    rows.assign(uid=[users[u] for u in test["uid"]], iid=own[test["iid"]],
                history=[" ".join(own[h]) for h in test["his"]]).to_csv(tmp_path / "own.csv", index=False)
    assert score_main(["--run", str(run), "--rows", str(tmp_path / "own.csv"), "--own-ids",
                       "--out", str(tmp_path / "own_s.csv")]) == 0
    mine = pd.read_csv(tmp_path / "own_s.csv")
    assert list(mine["user"]) == [users[u] for u in test["uid"]]
    assert list(mine["history"].fillna("")) == [" ".join(own[h]) for h in test["his"]]  # as the file wrote it
    pd.testing.assert_frame_equal(mine.drop(columns=["history", "user"]), got.drop(columns="history"))
    rows.assign(uid="", iid=own[test["iid"]], history="").to_csv(tmp_path / "new.csv", index=False)
    assert score_main(["--run", str(run), "--rows", str(tmp_path / "new.csv"), "--own-ids",
                       "--out", str(tmp_path / "new_s.csv")]) == 0
    np.testing.assert_allclose(pd.read_csv(tmp_path / "new_s.csv")["score"],
                               rec.score([0] * 5, [[]] * 5, test["iid"]), atol=1e-5)
    # an own id the dataset does not hold is refused by name; own ids without --own-ids are not ids
    assert score_main(["--run", str(run), "--own-ids", "--user", "u1", "--candidates", f"{own[1]} nope"]) == 2
    assert "--candidates: item 'nope' is not an item of" in capsys.readouterr().err
    assert score_main(["--run", str(run), "--own-ids", "--user", "u99", "--candidates", f"{own[1]}"]) == 2
    assert "--user: user 'u99' is not a user of" in capsys.readouterr().err
    assert score_main(["--run", str(run), "--user", "1", "--candidates", f"{own[1]}"]) == 2
    assert "is not an id (ids are whole numbers" in capsys.readouterr().err


def test_score_cli_errors(runs, tmp_path, capsys):
    dataset, out = runs
    assert score_main(["--run", str(tmp_path)]) == 2
    assert "is not a run folder (no config.yaml)" in capsys.readouterr().err
    # an unfinished run is named as such, with the command that finishes it
    import shutil
    cut = tmp_path / "cut"
    shutil.copytree(out / "runs" / "sasrec", cut)
    (cut / "results.json").unlink()
    assert score_main(["--run", str(cut)]) == 2
    assert f"is an unfinished run (checkpoints of sasrec); continue it with python train.py --workdir {cut} --resume" \
        in capsys.readouterr().err
    from sasrecllm_jax.compare import main as compare_main
    (cut / "scores.npz").unlink()
    assert compare_main([str(out / "runs" / "sasrec"), str(cut)]) == 2
    assert "is an unfinished run" in capsys.readouterr().err
    # a run refuses a dataset that is not the one it was trained on (its ids would name other items)
    from sasrecllm_jax.data.dataset import load_dataset
    ds = load_dataset(dataset)
    assert (out / "runs" / "sasrec" / "dataset.sha256").read_text().strip() == ds.digest()
    items = ds.items.copy()
    items.loc[0, "title"] += " (again)"
    assert dataclasses.replace(ds, items=items).digest() != ds.digest()
    splits = {**ds.splits, "test": ds.splits["test"].assign(label=1 - ds.splits["test"]["label"])}
    assert dataclasses.replace(ds, splits=splits).digest() != ds.digest()
    shutil.copytree(out / "runs" / "sasrec", tmp_path / "moved")
    (tmp_path / "moved" / "dataset.sha256").write_text("0" * 64 + "\n")
    assert score_main(["--run", str(tmp_path / "moved"), "--user", "1", "--candidates", "1 2"]) == 2
    assert "is not the dataset" in capsys.readouterr().err
    # a committed run folder keeps results and scores, not weights
    shutil.rmtree(cut / "final")
    shutil.copy(out / "runs" / "sasrec" / "results.json", cut / "results.json")
    assert score_main(["--run", str(cut)]) == 2
    assert "holds a finished run's results but not its weights" in capsys.readouterr().err
    assert score_main(["--run", str(out / "runs" / "sasrec"), "--user", "1", "--candidates", "1 99999"]) == 2
    assert "item id 99999 is not in the dataset" in capsys.readouterr().err


def test_test_time_ablation(runs, capsys, monkeypatch):
    from sasrecllm_jax.ablate import main as ablate_main
    dataset, out = runs
    run = out.parent / "hybrid"
    assert ablate_main([str(run), "--modes", "on", "drop", "shuffle", "--masks", "lora", "mapper", "sasrec"]) == 0
    ab = json.loads((run / "ablation.json").read_text())["test"]
    results = json.loads((run / "results.json").read_text())
    for part in ("all", "warm", "cold"):  # 'on' is the run's own evaluation
        assert ab["on"][part]["auc"] == pytest.approx(results["test"][part]["auc"], abs=1e-6)
    assert ab["drop"]["all"]["auc"] != ab["on"]["all"]["auc"] != ab["shuffle"]["all"]["auc"]
    printed = capsys.readouterr().out
    assert printed.splitlines()[1].startswith("as trained") and "mask:lora" in printed
    # each ablation is paired with the run's own test scores (scores.npz) on the same rows
    vs = json.loads((run / "ablation.json").read_text())["vs_trained"]["test"]
    assert set(vs) == set(ab)
    for name in ab:
        t = vs[name]["all"]["AUC"]
        assert t["auc_a"] == pytest.approx(results["test"]["all"]["auc"], abs=1e-6)
        assert t["auc_b"] == pytest.approx(ab[name]["all"]["auc"], abs=1e-6)
        assert t["diff"] == pytest.approx(ab[name]["all"]["auc"] - results["test"]["all"]["auc"], abs=1e-6)
    assert vs["on"]["all"]["AUC"]["diff"] == pytest.approx(0.0, abs=1e-6) and vs["drop"]["all"]["AUC"]["diff"] != 0
    lo, hi = vs["drop"]["all"]["AUC"]["ci95"]
    assert f"drop: all {vs['drop']['all']['AUC']['diff']:+.4f} [{lo:+.4f}, {hi:+.4f}]" in printed
    assert ablate_main([str(run), "--modes", "--masks", "llm_term"]) == 2  # no residual: no LLM term to mask
    assert "has none (model.mapper.fusion is not residual)" in capsys.readouterr().err
    # without a fusion, zeroing the mapper's layers makes the soft tokens zero vectors: the drop ablation
    assert ab["mask:mapper"]["all"] == ab["drop"]["all"] != ab["on"]["all"]
    # this run trained only its mapper: its LoRA and SASRec are still the initial ones (its seed's), so
    # masking them, which puts them back to the initialisation, changes nothing
    assert ab["mask:lora"]["all"] == ab["on"]["all"] == ab["mask:sasrec"]["all"]
    # the hybrid's own encoder alone on the same rows is in results.json, with the paired difference
    alone = results["encoder_alone"]
    assert alone["encoder"] == "sasrec" and alone["test"]["all"]["n"] == results["test"]["all"]["n"]
    table_dir = out.parent / "with_ablation"
    (table_dir / "runs").mkdir(parents=True)
    (table_dir / "runs" / "hybrid").symlink_to(run)
    summary_lib.summarise(table_dir)
    table = (table_dir / "SUMMARY.md").read_text()
    assert f"| hybrid | drop | {ab['drop']['all']['auc']:.4f} |" in table and "| hybrid | shuffle |" in table
    assert f"| {vs['drop']['all']['AUC']['diff']:+.4f} [{lo:+.4f}, {hi:+.4f}] |" in table
    # the grid's recipe for this method is the run's own config
    monkeypatch.setattr(grid_lib, "config_path", lambda dataset, method: run / "config.yaml")
    # a finished run made with another config is refused, naming what differs, and left as it was; before
    # the grid trains anything (a run listed first is not started)
    with pytest.raises(ConfigError, match=r"1 run\(s\) of another config: \S+hybrid \(finished: train.batch_size: "
                                          r"16 -> 8\); give this grid its own folders"):
        grid_lib.run_grid("ml1m", ["first", "hybrid"], [0], table_dir, ["train.batch_size=8"], ablate=True)
    assert not (table_dir / "runs" / "first").exists()
    # an unfinished run of another config (it would not resume) is named with them
    (table_dir / "runs" / "first").mkdir()
    (table_dir / "runs" / "first" / "config.yaml").write_text((run / "config.yaml").read_text())
    with pytest.raises(ConfigError, match=r"2 run\(s\) of another config: \S+first \(unfinished: train.batch_size: "
                                          r"16 -> 8; .*\); \S+hybrid \(finished"):
        grid_lib.run_grid("ml1m", ["first", "hybrid"], [0], table_dir, ["train.batch_size=8"], ablate=True)
    assert sorted(p.name for p in (table_dir / "runs" / "first").iterdir()) == ["config.yaml"]
    import shutil
    shutil.rmtree(table_dir / "runs" / "first")
    # a grid stopped between the two ablations resumes the missing one only (a finished run is not retrained)
    (run / "ablation.json").write_text(json.dumps({"test": {"drop": ab["drop"]}, "vs_trained": {"test": {"drop": vs["drop"]}}}))
    grid_lib.run_grid("ml1m", ["hybrid"], [0], table_dir, [], ablate=True)
    again = json.loads((run / "ablation.json").read_text())
    assert again["test"]["drop"] == ab["drop"] and again["vs_trained"]["test"]["drop"] == vs["drop"]
    assert again["test"]["shuffle"]["all"]["auc"] == pytest.approx(ab["shuffle"]["all"]["auc"])
    assert again["vs_trained"]["test"]["shuffle"]["all"]["AUC"]["diff"] == pytest.approx(vs["shuffle"]["all"]["AUC"]["diff"])
    assert "hybrid: done, skipped" in capsys.readouterr().out
    # ablations kept without their paired tests (an older ablation.json) are made again, with them
    (run / "ablation.json").write_text(json.dumps({"test": again["test"]}))
    grid_lib.run_grid("ml1m", ["hybrid"], [0], table_dir, [], ablate=True)
    assert set(json.loads((run / "ablation.json").read_text())["vs_trained"]["test"]) == {"drop", "shuffle"}
    assert ablate_main([str(out / "runs" / "icl")]) == 2
    assert "has no collaborative tokens" in capsys.readouterr().err
    assert ablate_main([str(run), "--modes", "zero"]) == 2
    assert "unknown ablation mode" in capsys.readouterr().err


def test_prompt_phases_report_real_tokens_and_padding(runs):
    # the batch's real rows' tokens count, its filler row (weight 0, a copy of row 0) and the padding do not
    batch = {"mask": np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 0]]), "weight": np.array([1.0, 1.0, 0.0])}
    assert token_counts(batch) == (5, 12)
    assert token_counts({"uid": np.arange(3), "weight": np.ones(3)}) == (0, 0)  # an encoder batch: no prompts
    dataset, out = runs
    run = out.parent / "hybrid"
    h = json.loads((run / "results.json").read_text())["timing"]["h"]
    assert h["token_slots"] == 3 * 16 * 128  # 3 steps of 16 rows, every prompt padded to 128 (ONE_SHAPE)
    assert 0 < h["steady_real_tokens"] < h["real_tokens"] < h["token_slots"]  # the first step compiled
    assert h["padding_share"] == round(1 - h["real_tokens"] / h["token_slots"], 4)
    last = [r for r in read_metrics(run) if r["kind"] == "train" and r["phase"] == "h"][-1]
    assert last["padding_share"] == pytest.approx(1 - h["real_tokens"] / h["token_slots"])  # one record: all 3 steps
    sasrec = json.loads((out / "runs" / "sasrec" / "results.json").read_text())["timing"]
    assert not any("real_tokens" in t for t in sasrec.values())  # phases without prompts count no tokens


def test_ablation_json_is_strict_json_and_says_where_there_is_no_paired_test():
    """A paired test of a part without two rows of each label (NaN) is stored as null, so ablation.json
    parses anywhere; the printed lines show it as '-', and an ablation whose rows the run's own scores do
    not hold says so."""
    from sasrecllm_jax.ablate import paired_lines, without_nan
    from sasrecllm_jax.metrics import paired_auc_test
    tests = {"all": {"AUC": paired_auc_test([1, 0, 1, 0], [0.9, 0.1, 0.8, 0.3], [0.9, 0.1, 0.2, 0.3])},
             "cold": {"AUC": paired_auc_test([1, 1], [0.5, 0.6], [0.4, 0.7])}}
    stored = json.loads(json.dumps(without_nan(tests), allow_nan=False))  # raises on any NaN left
    assert stored["cold"]["AUC"]["diff"] is None and stored["all"]["AUC"]["diff"] == -0.25
    lines = paired_lines({"drop": stored, "shuffle": None}, ["drop", "shuffle"])
    lo, hi = stored["all"]["AUC"]["ci95"]
    assert lines[1] == f"  drop: all -0.2500 [{lo:+.4f}, {hi:+.4f}]; cold -"
    assert lines[2] == "  shuffle: - (the run's scores.npz does not hold these rows)"


def test_claims_read_the_drop_ablation_paired(tmp_path):
    """The control row of the drop ablation reads ablation.json's paired test (stored as ablation - trained)
    as trained - ablation: a hybrid 0.05 above its ablation with the interval [+0.03, +0.07] shows it; a part
    whose test has too few labels (stored as null) gets no row; a run without ablation.json none at all."""
    drop = {"all": {"AUC": {"auc_a": 0.70, "auc_b": 0.65, "diff": -0.05, "ci95": [-0.07, -0.03]}},
            "new_item": {"AUC": {"auc_a": 0.60, "auc_b": 0.61, "diff": 0.01, "ci95": [-0.01, 0.03]}}}
    (tmp_path / "ablation.json").write_text(json.dumps({"test": {}, "vs_trained": {"test": {"drop": drop}}}))
    rows = claims_lib.ablation_control(tmp_path)
    assert rows == [
        ["control: AUC > its collaborative inputs dropped (ablate --modes drop)", "0.7000", "0.6500", "+0.0500",
         "[+0.0300, +0.0700]", "above", "shown"],
        ["control: new-item AUC > its collaborative inputs dropped (ablate --modes drop)", "0.6000", "0.6100",
         "-0.0100", "[-0.0300, +0.0100]", "covers", "not shown"]]
    drop["new_item"]["AUC"] = {"auc_a": None, "auc_b": None, "diff": None, "ci95": [None, None]}  # as stored
    (tmp_path / "ablation.json").write_text(json.dumps({"vs_trained": {"test": {"drop": drop}}}))
    assert [r[0] for r in claims_lib.ablation_control(tmp_path)] == [rows[0][0]]
    # the LLM term masked: the hybrid against its ID score alone, after the drop rows
    no_llm = {"all": {"AUC": {"auc_a": 0.70, "auc_b": 0.69, "diff": -0.01, "ci95": [-0.02, 0.00]}}}
    (tmp_path / "ablation.json").write_text(json.dumps({"vs_trained": {"test": {"drop": drop, "mask:llm_term": no_llm}}}))
    assert claims_lib.ablation_control(tmp_path)[1:] == [
        ["control: AUC > its ID score alone (ablate --masks llm_term)", "0.7000", "0.6900", "+0.0100",
         "[+0.0000, +0.0200]", "covers", "not shown"]]
    assert claims_lib.ablation_control(tmp_path / "elsewhere") == []


def test_plot_and_summary(runs, tmp_path):
    _, out = runs
    trained = [out / "runs" / "sasrec", out / "runs" / "icl", out.parent / "hybrid"]
    png = curves.plot_runs(trained, tmp_path / "curves.png")
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    fig = curves.draw_runs(trained)  # the phases that train.py logged, each its own pair of panels
    phases = {r["phase"] for run in trained for r in read_metrics(run) if r["kind"] in ("train", "eval")}
    assert len(phases) == 2 and {ax.get_label() for ax in fig.axes} == {
        f"{kind} {phase}" for kind in ("loss", "valid_auc") for phase in phases} | {"test_auc", "legend"}
    bars = next(ax for ax in fig.axes if ax.get_label() == "test_auc")
    assert [t.get_text() for t in bars.get_xticklabels()] == ["sasrec", "icl", "hybrid"]
    drawn = {p.get_gid() for p in bars.patches if p.get_gid()}
    assert {"sasrec|all", "sasrec|warm", "icl|all", "hybrid|all"} <= drawn and "sasrec|cold" not in drawn  # no cold rows
    summary = summary_lib.summarise(out)
    assert set(summary) == {"sasrec", "icl"}
    assert json.loads((out / "summary.json").read_text())["sasrec"]["test"]["all"]["n"] == 96
    table = (out / "SUMMARY.md").read_text()
    assert "| sasrec |" in table and "| icl |" in table
    for png in ("warm_cold.png", "curves.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_runs_keep_their_scores_for_paired_comparison(runs, tmp_path, capsys):
    """Each run's scores.npz reproduces its results.json metrics on both splits (the valid scores of a
    phase's best evaluation included); compare pairs two runs on the same rows and refuses other rows."""
    import shutil
    from sasrecllm_jax.compare import main as compare_main, parts
    from sasrecllm_jax.metrics import report as metric_report
    _, out = runs
    for run in (out / "runs" / "sasrec", out / "runs" / "icl", out.parent / "hybrid"):
        results, scores = json.loads((run / "results.json").read_text()), load_scores(run)
        for split, key in (("valid_small", "valid"), ("test", "test")):
            s = scores[split]
            again = metric_report(s["user"], s["label"], s["score"], parts(s))
            assert set(again) == set(results[key]) == {"all", "warm", "cold", "new_user", "new_item"}
            for part in again:
                for field in ("auc", "uauc", "n", "users_counted"):
                    assert again[part].get(field) == results[key][part].get(field), (run, split, part, field)
    assert compare_main([str(out / "runs" / "sasrec"), str(out / "runs" / "icl"), str(out / "runs" / "sasrec")]) == 0
    printed = capsys.readouterr().out
    sasrec_all, icl_all = (json.loads((out / "runs" / r / "results.json").read_text())["test"]["all"]
                           for r in ("sasrec", "icl"))
    sasrec, icl = sasrec_all["auc"], icl_all["auc"]
    assert f"| icl | all | AUC | 96 | {sasrec:.4f} | {icl:.4f} | {icl - sasrec:+.4f} |" in printed
    assert (f"| icl | all | UAUC | {icl_all['users_counted']} | {sasrec_all['uauc']:.4f} | {icl_all['uauc']:.4f} | "
            f"{icl_all['uauc'] - sasrec_all['uauc']:+.4f} |") in printed
    assert "| sasrec | all | AUC | 96 | " in printed and "| +0.0000 | [+0.0000, +0.0000] | 1.000 |" in printed
    other = tmp_path / "other"  # the same run, but its scores claim other rows
    shutil.copytree(out / "runs" / "icl", other)
    z = dict(np.load(other / "scores.npz"))
    np.savez(other / "scores.npz", **{**z, "test.rows": np.array("0123456789abcdef")})
    assert compare_main([str(out / "runs" / "sasrec"), str(other)]) == 2
    assert "scored different rows" in capsys.readouterr().err
    np.savez(other / "scores.npz", **{k: v for k, v in z.items() if k != "test.user"})  # older than the user column
    assert compare_main([str(out / "runs" / "sasrec"), str(other)]) == 0
    assert "| other | all | UAUC |" in capsys.readouterr().out  # users are a function of the rows: the base's serve
    (other / "scores.npz").unlink()
    assert compare_main([str(out / "runs" / "sasrec"), str(other)]) == 2
    assert "no scores.npz" in capsys.readouterr().err
    summary_lib.summarise(out)
    assert f"| icl | all | AUC | 96 | {sasrec:.4f} | {icl:.4f} |" in (out / "SUMMARY.md").read_text()
    shutil.copytree(out / "runs" / "sasrec", tmp_path / "old", ignore=shutil.ignore_patterns("scores.npz"))
    assert score_main(["--run", str(tmp_path / "old"), "--write-run-scores"]) == 0  # a run made before scores.npz
    printed = capsys.readouterr().out
    assert f"test: AUC {sasrec:.6f} (as in results.json)" in printed and "valid_small: AUC" in printed
    again, kept = load_scores(tmp_path / "old"), load_scores(out / "runs" / "sasrec")
    for split in ("valid_small", "test"):
        np.testing.assert_allclose(again[split]["score"], kept[split]["score"], rtol=0, atol=1e-6)
        assert again[split]["rows"] == kept[split]["rows"]
    assert compare_main([str(out / "runs" / "sasrec"), str(out / "runs" / "icl"), "--fuse"]) == 0
    fused = capsys.readouterr().out
    assert "Late fusion of sasrec and icl" in fused and fused.count("| fusion | all | AUC | 96 |") == 2
    assert fused.count("| fusion | all | UAUC |") == 2
    # a further run (a hybrid of the two, say) is tested against the fusion, paired on the same rows
    from sasrecllm_jax.compare import late_fusion
    from sasrecllm_jax.metrics import paired_auc_test
    hybrid = out.parent / "hybrid"
    assert compare_main([str(out / "runs" / "sasrec"), str(out / "runs" / "icl"), str(hybrid), "--fuse"]) == 0
    fusion = late_fusion(out / "runs" / "sasrec", out / "runs" / "icl")
    rows = load_scores(hybrid)["test"]
    t = paired_auc_test(rows["label"], fusion["test_scores"], rows["score"])
    assert (f"| hybrid | all | AUC | 96 | {t['auc_a']:.4f} | {t['auc_b']:.4f} | {t['diff']:+.4f} | "
            f"[{t['ci95'][0]:+.4f}, {t['ci95'][1]:+.4f}] |") in capsys.readouterr().out
    assert compare_main([str(out / "runs" / "sasrec"), str(out / "runs" / "icl"), str(other), "--fuse"]) == 2
    assert "no scores.npz" in capsys.readouterr().err
    grid = tmp_path / "grid"  # the summary adds the SASRec + TALLRec fusion when both have scores
    (grid / "runs").mkdir(parents=True)
    (grid / "runs" / "sasrec").symlink_to(out / "runs" / "sasrec")
    (grid / "runs" / "tallrec").symlink_to(out / "runs" / "icl")
    summary_lib.summarise(grid)
    assert "Late fusion of sasrec and tallrec" in (grid / "SUMMARY.md").read_text()
    assert "The paper's claims" not in (grid / "SUMMARY.md").read_text()  # no SASRecLLM run yet
    (grid / "runs" / "sasrecllm_x").symlink_to(out.parent / "hybrid")  # the claims, read on the hybrid
    summary_lib.summarise(grid)
    text = (grid / "SUMMARY.md").read_text()
    assert "on the SASRecLLM configuration best on valid AUC: sasrecllm_x" in text
    from sasrecllm_jax.compare import compare
    for claim, base, part, rel in claims_lib.CLAIMS:
        a, b = (json.loads((grid / "runs" / r / "results.json").read_text())["test"][part]["auc"]
                for r in (base, "sasrecllm_x"))
        if a is None or b is None:  # no rows of that part in the synthetic test split
            assert f"| {claim} | - | - | - | - | - | - |" in text
            continue
        lo, hi = compare(grid / "runs" / base, grid / "runs" / "sasrecllm_x")[part]["AUC"]["ci95"]
        side = "above" if lo > 0 else "below" if hi < 0 else "covers"
        shown = "shown" if lo > (0 if rel == ">" else -0.005) else "contradicted" if hi < 0 else "not shown"
        assert (f"| {claim} | {b:.4f} | {a:.4f} | {b - a:+.4f} | [{lo:+.4f}, {hi:+.4f}] | {side} | {shown} |"
                in text), claim
    # our control beside the paper's claims: the hybrid against the late fusion of its encoder's and TALLRec's scores
    from sasrecllm_jax.compare import late_fusion
    from sasrecllm_jax.metrics import auc
    fused = late_fusion(grid / "runs" / "sasrec", grid / "runs" / "tallrec")
    f_auc = auc(load_scores(grid / "runs" / "sasrec")["test"]["label"], fused["test_scores"])
    h_auc = json.loads((grid / "runs" / "sasrecllm_x" / "results.json").read_text())["test"]["all"]["auc"]
    assert (f"| control: AUC > late fusion of sasrec + tallrec (w = {fused['weight_b']:.2f} on valid_small) | "
            f"{h_auc:.4f} | {f_auc:.4f} | {h_auc - f_auc:+.4f} | [") in text
    # a baseline scored on another number of rows (a CPU run of other caps) gets no verdict
    import copy
    summary = json.loads((grid / "summary.json").read_text())
    other = copy.deepcopy(summary)
    other["sasrec"]["test"]["all"]["n"] = 50
    claims = "\n".join(claims_lib.claims_section(grid, other))
    assert "| AUC > SASRec |" in claims and "| - | - | - | not comparable: 96 vs 50 test rows |" in claims
    assert "| AUC > TALLRec |" in claims and claims.count("not comparable") == 1
    # each phase records the step it handed on: the step of its best valid evaluation
    hybrid = json.loads((grid / "runs" / "sasrecllm_x" / "results.json").read_text())
    evals = [r for r in read_metrics(out.parent / "hybrid") if r["kind"] == "eval" and r["phase"] == "h"]
    assert hybrid["timing"]["h"]["best_step"] == max(evals, key=lambda r: r["all/auc"])["step"] > 0
    assert "step-0" not in text
    kept = {**hybrid, "timing": {"h": {**hybrid["timing"]["h"], "best_step": 0}}}
    assert "Note: x's last phase (h) handed on its step-0 parameters" in claims_lib.kept_start_note("x", kept)[1]
    # a hybrid whose SASRec is not the reference one is also shown beside its own encoder alone and pop
    assert claims_lib.own_encoder_note(summary, "sasrecllm_x") == []
    older = copy.deepcopy(summary)  # a SASRec run from before model.sasrec.bias existed is the reference one
    del older["sasrec"]["config"]["model"]["sasrec"]["bias"]
    assert claims_lib.own_encoder_note(older, "sasrecllm_x") == []
    counted = copy.deepcopy(summary)
    mine = {**summary["sasrec"]["config"]["model"]["sasrec"], "bias": "counts"}
    counted["sasrecllm_x"]["config"]["model"]["sasrec"] = mine
    counted["sasrec_counts"] = copy.deepcopy(summary["sasrec"])
    counted["sasrec_counts"]["config"]["model"]["sasrec"] = mine
    counted["pop"] = {**copy.deepcopy(summary["sasrec"]), "method": "pop"}
    note = claims_lib.own_encoder_note(counted, "sasrecllm_x")[1]
    t = lambda n: " / ".join("-" if counted[n]["test"][p]["auc"] is None else f"{counted[n]['test'][p]['auc']:.4f}"
                             for p in ("all", "warm", "cold"))  # the synthetic split has no cold rows
    assert f"its own encoder alone and the counts, test AUC all / warm / cold: sasrec_counts {t('sasrec')}; " \
           f"pop {t('sasrec')}; sasrecllm_x: {t('sasrecllm_x')}." in note and "'bias': 'counts'" in note
    assert claims_lib.fusion_control(grid, counted, "sasrecllm_x") == []  # its encoder's run is not in the folder
    (grid / "runs" / "sasrec_counts").symlink_to(out / "runs" / "sasrec")  # the control mixes its own encoder's scores
    assert "late fusion of sasrec_counts + tallrec" in claims_lib.fusion_control(grid, counted, "sasrecllm_x")[0][0]


def test_the_fusion_controls_add_the_abstaining_and_two_weight_fusions_where_valid_has_new_items(tmp_path):
    """The claims' fusion controls: the plain late fusion always; where the encoder's validation rows hold
    new items, the fusion abstaining on them; for a hybrid with two LLM gates, the two-weight fusion. Each
    row's numbers are compare.late_fusion's on the same test rows."""
    from sasrecllm_jax.compare import late_fusion
    from sasrecllm_jax.metrics import auc
    r = np.random.default_rng(8)
    n = 3000
    runs = tmp_path / "grid" / "runs"

    def split():
        new = r.random(n) < 0.4
        y = (r.random(n) < np.where(new, 0.7, 0.4)).astype(np.int8)
        return new, y, np.where(new, r.normal(size=n), y + r.normal(size=n)), 0.5 * y + r.normal(size=n)
    (nv, yv, av, bv), (nt, yt, at, bt) = split(), split()
    for name, v, t in (("sasrec", av, at), ("tallrec", bv, bt), ("sasrecllm_x", av + bv, at + bt)):
        (runs / name).mkdir(parents=True)
        np.savez(runs / name / "scores.npz", **{
            "valid_small.score": v, "valid_small.label": yv, "valid_small.new_item": nv.astype(np.int8),
            "valid_small.warm": (~nv).astype(np.int8), "test.warm": (~nt).astype(np.int8),
            "valid_small.rows": np.array("v"), "test.score": t, "test.label": yt,
            "test.new_item": nt.astype(np.int8), "test.rows": np.array("t")})
    model = lambda **mapper: {"config": {"model": {"sasrec": {}, "mapper": mapper}}}
    summary = {"sasrec": {"method": "sasrec", **model()}, "tallrec": {"method": "tallrec", **model()},
               "sasrecllm_x": {"method": "sasrecllm", **model(llm_gates="one")}}
    rows = claims_lib.fusion_control(tmp_path / "grid", summary, "sasrecllm_x")
    assert [row[0].split(" of sasrec")[0] for row in rows] == ["control: AUC > late fusion",
                                                                "control: AUC > late fusion abstaining on new items"]
    summary["sasrecllm_x"]["config"]["model"]["mapper"]["llm_gates"] = "known_unknown"
    rows = claims_lib.fusion_control(tmp_path / "grid", summary, "sasrecllm_x")
    assert rows[2][0].startswith("control: AUC > two-weight late fusion abstaining on new items of sasrec + tallrec")
    for row, kw in zip(rows, ({}, {"abstain": True}, {"abstain": True, "split_gate": True})):
        fused = late_fusion(runs / "sasrec", runs / "tallrec", **kw)
        assert row[1] == f"{auc(yt, at + bt):.4f}" and row[2] == f"{auc(yt, fused['test_scores']):.4f}"
    summary["sasrecllm_x"]["config"]["model"]["mapper"]["llm_gates"] = "unknown_only"  # its own control
    rows = claims_lib.fusion_control(tmp_path / "grid", summary, "sasrecllm_x")
    assert len(rows) == 3 and rows[2][0].startswith("control: AUC > late fusion abstaining on new items, the LLM on "
                                                    "new items only of sasrec + tallrec")
    fused = late_fusion(runs / "sasrec", runs / "tallrec", abstain=True, split_gate=True, known_gate_zero=True)
    assert rows[2][2] == f"{auc(yt, fused['test_scores']):.4f}"
    for name in ("sasrec", "tallrec", "sasrecllm_x"):  # no new item on valid: the plain fusion alone
        scores = dict(np.load(runs / name / "scores.npz"))
        np.savez(runs / name / "scores.npz", **{**scores, "valid_small.new_item": np.zeros(n, np.int8)})
    assert len(claims_lib.fusion_control(tmp_path / "grid", summary, "sasrecllm_x")) == 1


def test_scores_written_before_the_new_flags_get_them_from_the_runs_dataset(tmp_path):
    """A scores.npz without new_user / new_item (an older run's) gets them from the dataset its config.yaml
    names, for the splits whose rows (fingerprint) are that dataset's split in order, and equal to the
    dataset's own cause masks; a split of other rows (a sample, say), or a config naming no dataset here,
    stays without them."""
    import yaml
    from data_tools.cold import hold_out_items
    from helpers import synthetic_dataset
    from sasrecllm_jax.data.dataset import cause_masks, load_dataset, write_dataset
    from sasrecllm_jax.run_folder.scores import _fingerprint, load_scores
    plain = load_dataset(synthetic_dataset(tmp_path / "synthetic"))
    write_dataset(tmp_path / "cold", hold_out_items(plain.splits, 0.3, seed=1)[0], plain.items,
                           source="synthetic", recipe="30% of valid/test items held out")
    ds = load_dataset(tmp_path / "cold")
    test, valid, train = ds.splits["test"], ds.splits["valid"], ds.splits["train"]
    run = tmp_path / "old_run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"dataset": "cold", "data_dir": str(tmp_path)}}))
    sample = valid.iloc[::2]
    np.savez(run / "scores.npz", **{
        "test.score": np.zeros(len(test)), "test.label": test["label"].to_numpy(),
        "test.rows": np.array(_fingerprint(test["uid"], test["iid"], test["label"])),
        "valid.score": np.zeros(len(sample)), "valid.label": sample["label"].to_numpy(),
        "valid.rows": np.array(_fingerprint(sample["uid"], sample["iid"], sample["label"]))})
    scores = load_scores(run)
    masks = cause_masks(test, train)
    np.testing.assert_array_equal(scores["test"]["new_item"], masks["new_item"] | masks["both"])
    np.testing.assert_array_equal(scores["test"]["new_user"], masks["new_user"] | masks["both"])
    assert (masks["new_item"] | masks["both"]).any()
    assert "new_item" not in scores["valid"]  # a sample of valid: not the dataset's rows
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"dataset": "elsewhere", "data_dir": "nowhere"}}))
    assert "new_item" not in load_scores(run)["test"]


def test_a_claim_is_shown_only_when_its_interval_is_on_its_side():
    test = lambda lo, hi: {"diff": (lo + hi) / 2, "ci95": [lo, hi]}
    assert claims_lib.verdict(test(0.001, 0.01), ">") == "shown"
    assert claims_lib.verdict(test(-0.001, 0.01), ">") == "not shown"  # a positive point estimate is not enough
    assert claims_lib.verdict(test(-0.02, -0.001), ">") == "contradicted"
    assert claims_lib.verdict(test(-0.004, 0.003), ">=") == "shown"  # no loss beyond the stated -0.005
    assert claims_lib.verdict(test(-0.006, 0.003), ">=") == "not shown"
    assert claims_lib.verdict({"diff": float("nan"), "ci95": [0, 0]}, ">") == "no paired test"


def test_compare_names_runs_that_share_a_folder_name(tmp_path):
    from sasrecllm_jax.compare import run_names
    assert run_names([tmp_path / "runs" / "sasrec", tmp_path / "runs" / "icl"]) == ["sasrec", "icl"]
    assert run_names([tmp_path / "a" / "runs" / "sasrec", tmp_path / "b" / "runs" / "sasrec"]) == [
        "a/runs/sasrec", "b/runs/sasrec"]


def test_code_version_outside_a_checkout(tmp_path, monkeypatch):
    """A copy of the tree without .git (or with a stale one: the GPU machine) records the commit its
    sender states in $SASRECLLM_COMMIT."""
    monkeypatch.delenv("SASRECLLM_COMMIT", raising=False)
    here = run_files.code_version()
    assert here not in ("", "unknown")  # this checkout is a git repository
    monkeypatch.setenv("SASRECLLM_COMMIT", "abc1234")
    assert run_files.code_version() == "abc1234"  # the stated commit wins over the checkout's own
    monkeypatch.setattr(run_files, "ROOT", tmp_path)
    assert run_files.code_version() == "abc1234"
    monkeypatch.delenv("SASRECLLM_COMMIT")
    assert run_files.code_version() == "unknown"  # no checkout there, nothing stated


def test_code_version_is_read_once_per_process(monkeypatch):
    """A commit or edit made while a run is under way must not relabel it: the checkout is read on the
    first call (a run makes it when it starts) and not again."""
    import subprocess
    monkeypatch.delenv("SASRECLLM_COMMIT", raising=False)
    first = run_files.code_version()
    assert first not in ("", "unknown")
    moved = lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout="fedcba9\n" if "rev-parse" in a[0] else " M x\n")
    monkeypatch.setattr(run_files.subprocess, "run", moved)  # the checkout "moves on" after the run started
    assert run_files.code_version() == first


def test_loss_smoothing_is_tensorboards():
    """Debiased EMA, by hand: weight 0.5 over [1, 0, 1] gives 1, (0.25/0.75), (0.625/0.875)."""
    from sasrecllm_jax.plots.style import smooth
    np.testing.assert_allclose(smooth([1.0, 0.0, 1.0], 0.5), [1.0, 1 / 3, 5 / 7])
    assert smooth([], 0.9) == [] and smooth([2.0], 0.9) == [2.0]


def _result(method, seed, auc, warm, cold, valid, n=100):
    part = lambda a: {"auc": a, "uauc": a, "n": n}
    return {"method": method, "config": {"train": {"seed": seed}}, "commit": "abc",
            "test": {"all": part(auc), "warm": part(warm), "cold": part(cold)}, "valid": {"all": part(valid)}}


def test_seeds_are_summarised_as_mean_and_sd(tmp_path, capsys):
    """Runs that differ only in train.seed (NAME, NAME-seedN, NAME-seedN-TAG) form one row of mean +- sample
    sd and one point of the chart; runs on another number of test rows, or another tag, stay apart."""
    summary = {"sasrec": _result("sasrec", 0, 0.70, 0.72, 0.66, 0.68),
               "sasrec-seed1": _result("sasrec", 1, 0.72, 0.71, None, 0.69),
               "sasrec-seed2": _result("sasrec", 2, 0.68, 0.70, 0.64, 0.67, n=50),  # a CPU subset: other rows
               "tallrec": _result("tallrec", 0, 0.60, 0.61, 0.59, 0.58),
               "tallrec-k2": _result("tallrec", 0, 0.62, 0.63, 0.61, 0.60),
               "tallrec-seed3-k2": _result("tallrec", 3, 0.66, 0.61, 0.57, 0.60)}
    assert seeds.seed_groups(summary) == {"sasrec": ["sasrec", "sasrec-seed1"],
                                                "tallrec-k2": ["tallrec-k2", "tallrec-seed3-k2"]}
    table = "\n".join(seeds.seeds_section(summary))
    # mean of 0.70 and 0.72 is 0.71; sample sd sqrt(2 * 0.01^2 / 1) = 0.0141; a part without rows in one seed: -
    assert "| sasrec | 0, 1 | 0.7100 +- 0.0141 | 0.7100 +- 0.0141 | 0.7150 +- 0.0071 | - | 0.6850 +- 0.0071 |" in table
    assert "| tallrec-k2 | 0, 3 | 0.6400 +- 0.0283 |" in table
    points = {p["name"]: p for p in seeds.method_points(summary)}
    assert set(points) == {"sasrec", "sasrec-seed2", "tallrec", "tallrec-k2"}
    assert points["sasrec"]["seeds"] == 2 and points["sasrec"]["cold"] is None
    assert points["tallrec-k2"]["all"] == pytest.approx(0.64) and points["tallrec-k2"]["all_sd"] == pytest.approx(0.02 * 2 ** 0.5)
    assert points["tallrec"]["all_sd"] is None and points["tallrec"]["warm"] == 0.61
    for reference in ("tallrec", "sasrec", None):  # sasrec: no cold rows in one seed, so no zoomed plane
        png = warm_cold.plot_warm_cold(list(points.values()), tmp_path / "wc.png", reference=reference)
        assert png.read_bytes()[:4] == b"\x89PNG"
    # the zoomed plane shows the reference's contenders (overall AUC within 0.05), with a 15% margin
    ref = {"all": 0.70, "warm": 0.72, "cold": 0.68}
    near, far_off, weak = ({"all": 0.69, "warm": 0.70, "cold": 0.69}, {"all": 0.71, "warm": 0.60, "cold": 0.80},
                           {"all": 0.60, "warm": 0.50, "cold": 0.50})
    assert warm_cold.zoom_around(ref, [ref, near, weak]) == pytest.approx(0.023)
    assert warm_cold.zoom_around(ref, [ref, weak]) == 0.01 and warm_cold.zoom_around(ref, [ref, near, far_off]) == 0.05
    assert seeds.seeds_section({"sasrec": summary["sasrec"]}) == []
    # the claims again on means over seeds: rows only where both sides ran several seeds on the same rows
    summary.update({"sasrecllm_x": _result("sasrecllm", 0, 0.74, 0.70, 0.68, 0.70),
                    "sasrecllm_x-seed1": _result("sasrecllm", 1, 0.70, 0.70, 0.66, 0.69)})
    claims = "\n".join(claims_lib.seed_claims(tmp_path, summary, "sasrecllm_x"))  # no scores.npz: no interval
    assert "| AUC > SASRec | 0.7200 +- 0.0283 (2) | 0.7100 +- 0.0141 (2) | +0.0100 | - | - | no paired test |" in claims
    assert "| warm AUC >= SASRec | 0.7000 +- 0.0000 (2) | 0.7150 +- 0.0071 (2) | -0.0150 | - |" in claims
    assert "cold AUC > SASRec" not in claims and "TALLRec" not in claims  # a seed without cold rows; one TALLRec seed
    assert claims_lib.seed_claims(tmp_path, summary, "tallrec") == []
    # with the runs' scores of the same test rows: DeLong's interval of the difference of the seed means
    rng = np.random.default_rng(0)
    rows = SplitData("test", np.arange(200, dtype=np.int32) % 20, np.arange(200, dtype=np.int32),
                     (rng.random(200) < 0.5).astype(np.float32), np.ones(200, np.int8), np.zeros((200, 2), np.int32), [])
    scores = {n: rows.label * (1.0 if n.startswith("sasrecllm") else 0.3) + rng.normal(0, 0.5, 200)
              for n in ("sasrec", "sasrec-seed1", "sasrecllm_x", "sasrecllm_x-seed1")}
    for name, score in scores.items():
        (tmp_path / "runs" / name).mkdir(parents=True)
        save_scores(tmp_path / "runs" / name / "scores.npz", {"test": (rows, score)})
    want = paired_auc_means_test(rows.label, [scores["sasrec"], scores["sasrec-seed1"]],
                                 [scores["sasrecllm_x"], scores["sasrecllm_x-seed1"]])
    assert want["ci95"][0] > 0
    claims = "\n".join(claims_lib.seed_claims(tmp_path, summary, "sasrecllm_x"))
    span = f"[{want['ci95'][0]:+.4f}, {want['ci95'][1]:+.4f}]"
    assert f"| AUC > SASRec | 0.7200 +- 0.0283 (2) | 0.7100 +- 0.0141 (2) | +0.0100 | {span} | above | shown |" in claims
    # the claims read the configuration best on valid over its seeds, on its run of the baselines' seed (0)
    assert claims_lib.chosen_hybrid(summary) == ("sasrecllm_x", pytest.approx(0.695), 2, 1)
    summary["sasrecllm_y"] = _result("sasrecllm", 0, 0.60, 0.60, 0.60, 0.698)  # one seed, above x's mean
    assert claims_lib.chosen_hybrid(summary) == ("sasrecllm_y", pytest.approx(0.698), 1, 2)
    summary["sasrecllm_x-seed1"]["valid"]["all"]["auc"] = 0.72  # x's mean 0.71 leads: its seed-0 run, not seed 1's
    assert claims_lib.chosen_hybrid(summary) == ("sasrecllm_x", pytest.approx(0.71), 2, 2)
    # a configuration without a run of the baselines' seed is passed over, however it does on valid
    summary["sasrecllm_z-seed1"] = _result("sasrecllm", 1, 0.80, 0.80, 0.80, 0.80)
    assert claims_lib.chosen_hybrid(summary) == ("sasrecllm_x", pytest.approx(0.71), 2, 3)
    # nor one evaluated on other valid rows (other row caps), whose AUC is not comparable
    summary["sasrecllm_w"] = _result("sasrecllm", 0, 0.80, 0.80, 0.80, 0.90, n=400)
    assert claims_lib.chosen_hybrid(summary) == ("sasrecllm_x", pytest.approx(0.71), 2, 3)
    assert experiments_cli.main(["ml1m", "--summary-only", "--out", str(tmp_path / "nothing")]) == 2
    assert "no finished runs under" in capsys.readouterr().err


def test_an_interrupted_grid_or_run_stops_with_one_line(tmp_path, monkeypatch, capsys):
    # A deadline (`timeout -s INT` in bench/device_run.sh) or Ctrl-C: a line that says what was kept and how
    # to go on, exit 130, no traceback from wherever the interrupt landed (inside an XLA compile, on the GPU).
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(experiments_cli, "run_grid", interrupted)
    assert experiments_cli.main(["ml1m", "--methods", "mf", "--out", str(tmp_path / "grid")]) == 130
    err = capsys.readouterr().err
    assert err.startswith("stopped: interrupted") and str(tmp_path / "grid" / "runs") in err
    from sasrecllm_jax import cli
    monkeypatch.setattr(cli, "train_and_evaluate", interrupted)
    assert cli.train_main(["--workdir", str(tmp_path / "run")]) == 130
    err = capsys.readouterr().err
    assert err.startswith("stopped: interrupted") and str(tmp_path / "run") in err and "--resume" in err


def test_a_grid_checks_every_runs_phases_before_it_trains_any(tmp_path):
    """A phase refusal of any run (here the second method's) stops the grid before the first trains, naming
    the recipe and the --set flags that shaped the phases; a phase may restore from a run the grid trains
    before it (resolve_phases' pending), never from one it has not trained."""
    from sasrecllm_jax.config import load_config
    from sasrecllm_jax.train.strategies import resolve_phases
    with pytest.raises(ConfigError, match=r"configs/experiments/ml1m/tallrec\.yaml --set train\.llm_epochs=0: "
                                          r"train\.phases\[0\] \(\w+\): set epochs > 0"):
        grid_lib.run_grid("ml1m", ["sasrec", "tallrec"], [0], tmp_path, ["train.llm_epochs=0", "train.batch_size=8"])
    assert not (tmp_path / "runs").exists()
    cfg = load_config(grid_lib.config_path("ml1m", "tallrec"), [
        f"train.phase_overrides={{text_lora: {{restore: {{lora: {tmp_path / 'runs' / 'first'}}}}}}}"])
    with pytest.raises(ConfigError, match="no finished run there"):
        resolve_phases(cfg)
    assert resolve_phases(cfg, pending=[tmp_path / "runs" / "first"])[0].restore == {"lora": str(tmp_path / "runs" / "first")}
