"""Score rows or rank candidates with a finished run.

    python -m sasrecllm_jax.score --run runs/quickstart --rows rows.csv --out scores.csv
        rows.csv: uid, history (space-separated item ids, oldest first), iid
    python -m sasrecllm_jax.score --run runs/quickstart --user 12 --history "5 9 31" --candidates "7 8 40"
    python -m sasrecllm_jax.score --run runs/old --write-run-scores   # RUN/scores.npz for a run made without it
    python -m sasrecllm_jax.score --run runs/mine --own-ids --user 12 --history "B0001" --candidates "B0042 B0007"

Item ids are the dataset's (see DATASET/items.parquet): 1..the largest item id; user ids 1..the largest
user id. A dataset that data_tools prepared keeps each item's own id from its source (items.parquet,
column `item`) and user (users.parquet), and the output shows the item's beside the iid; with --own-ids
the ids you give are those (an empty uid cell of --rows: a user the dataset does not know).
Ids outside the dataset, ids that are not whole numbers and unreadable --rows files are refused with one
line (exit 2). Scores are the model's logits (higher = more likely to be liked); `p_like` is
sigmoid(score). Ranking candidates (--user) prints the titles of the history and of the candidates.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from sasrecllm_jax import compile_cache
from sasrecllm_jax.assembly import Assembly
from sasrecllm_jax.config import Config, from_dict, load_yaml
from sasrecllm_jax.data.dataset import Dataset
from sasrecllm_jax.data.registry import resolve_dataset
from sasrecllm_jax.errors import ConfigError, DataError, run_command
from sasrecllm_jax.evaluate import Scorer, evaluate, score_rows
from sasrecllm_jax.run_folder.files import check_dataset, unfinished
from sasrecllm_jax.run_folder.scores import SCORES_FILE, save_scores
from sasrecllm_jax.train import groups
from sasrecllm_jax.train.checkpoint import Store
from sasrecllm_jax.train.strategies import resolve_phases, scoring_prompt


def own_ids(dataset, iids) -> dict[str, np.ndarray]:
    """{"item": the source's own ids of iids}, to put beside them in a table ({} when the dataset has none)."""
    ids = dataset.item_ids()
    return {} if ids is None else {"item": ids[np.asarray(iids, np.int64)]}


def p_like(scores) -> np.ndarray:
    """sigmoid(score): the probability of a like that a score stands for."""
    return 1.0 / (1.0 + np.exp(-np.asarray(scores)))


class Recommender:
    """A run folder's final model, ready to score."""

    def __init__(self, run: str | Path, dataset: Dataset | None = None):
        """dataset: the run's (data.dataset of its config), when the caller has loaded it already."""
        run = Path(run)
        self.cfg, self.prompt = self.run_config(run)
        dataset = dataset if dataset is not None else resolve_dataset(self.cfg.data)
        check_dataset(run, dataset.path, dataset.digest())  # before the model loads
        self.assembly, params = Assembly.for_run(self.cfg, dataset=dataset)
        params = groups.select(params, groups.prompt_modules(self.prompt, self.cfg.model.encoder))
        store = Store(run / "final")
        try:
            restored, _ = store.restore(groups.group_trees(params))
        finally:
            store.close()
        self.params = groups.replace_groups(params, restored)
        self.scorer = Scorer(self.assembly.model(self.prompt, deterministic=True))

    @classmethod
    def run_config(cls, run: Path) -> tuple[Config, str]:
        """(a finished run's config, the prompt its final model scores), read without loading the model."""
        cls.check_run(run)
        cfg = from_dict(Config, load_yaml((run / "config.yaml").read_text()), str(run / "config.yaml"))
        return cfg, scoring_prompt(cfg.train.method, resolve_phases(cfg, str(run / "config.yaml")))

    def history_of(self, uid: int, history: list[int], shown_user) -> list[int]:
        """The history a request is scored with: the given one, or for a known user given none what the
        dataset knows they liked (a note on stderr says so)."""
        self.check_user(uid)
        if not uid or history:
            return history
        liked = self.liked_items(uid)
        print(f"note: no --history given: user {shown_user}'s {len(liked)} liked item(s) in the dataset are their "
              f"history", file=sys.stderr)
        return liked

    def liked_items(self, uid: int) -> list[int]:
        """What the dataset knows a user liked: the items of their positive rows in every split, oldest first
        (the history a known user is asked with when none is given)."""
        if not uid:
            return []
        rows = pd.concat([df.loc[(df["uid"] == uid) & (df["label"] == 1), ["timestamp", "iid"]]
                          for df in self.assembly.dataset.splits.values()])
        rows = rows.sort_values("timestamp", kind="stable").drop_duplicates("iid", keep="last")
        return [int(i) for i in rows["iid"]]

    @classmethod
    def dataset_of(cls, run: Path) -> Dataset:
        """A finished run's dataset, loaded without the model (to check a request before the model loads)."""
        return resolve_dataset(cls.run_config(run)[0].data)

    @staticmethod
    def check_run(run: Path) -> None:
        """Refuse a folder that holds no finished run."""
        why = unfinished(run)
        if why:
            raise ConfigError(why)

    def check_user(self, uid, row: str = "") -> None:
        """Refuse a user id outside 0..num_users (0 is a user the dataset does not know), naming it."""
        n_users = self.assembly.dataset.num_users
        if not 0 <= int(uid) <= n_users:
            raise DataError(f"{row}user id {uid} is not in the dataset (ids run 1..{n_users}; 0 is a new user)")

    def check_items(self, iids, row: str = "") -> None:
        """Refuse the first item id outside 1..num_items, naming it."""
        n_items = self.assembly.dataset.num_items
        bad = [x for x in iids if not 1 <= int(x) <= n_items]
        if bad:
            raise DataError(f"{row}item id {bad[0]} is not in the dataset (ids run 1..{n_items})")

    def check_ids(self, uids, histories, iids, where: str = "") -> None:
        """Refuse a user or item id outside the dataset in any row, naming the row (of file `where`) and the id."""
        for r, (u, h, i) in enumerate(zip(uids, histories, iids)):
            row = f"{where} row {r + 1}: " if where else ""
            self.check_user(u, row)
            self.check_items([*h, i], row)

    def score(self, uids, histories, iids, batch_size: int = 32) -> np.ndarray:
        self.check_ids(uids, histories, iids)
        df = pd.DataFrame({"uid": np.asarray(uids, np.int64), "iid": np.asarray(iids, np.int64), "label": 0,
                           "timestamp": 0, "his": [np.asarray(h, np.int64) for h in histories], "not_cold": 1})
        data = self.assembly.encoder.encode_rows("request", df, self.prompt)
        return score_rows(self.scorer, self.params, data, batch_size, self.cfg.data.pad_multiple, self.prompt,
                          share_prefix=self.cfg.eval.share_prefix)

    def write_run_scores(self, run: Path) -> dict:
        """Evaluate the run's valid and test splits again (the rows its results.json counts) and write
        RUN/scores.npz; returns {split: (AUC now, AUC in results.json)}."""
        results = json.loads((Path(run) / "results.json").read_text()) if (Path(run) / "results.json").exists() else {}
        d = self.cfg.data
        out, check = {}, {}
        for split, key in ((d.eval_split, "valid"), ("test", "test")):
            data = self.assembly.split(split, self.prompt, self.assembly.row_limit("eval"))
            metrics, scores = evaluate(self.scorer, self.params, data, self.cfg, self.prompt)
            out[split] = (data, scores)
            check[split] = (metrics["all"]["auc"], results.get(key, {}).get("all", {}).get("auc"))
        save_scores(Path(run) / SCORES_FILE, out)
        return check

    def rank(self, uid: int, history, candidates) -> pd.DataFrame:
        scores = self.score([uid] * len(candidates), [history] * len(candidates), candidates)
        d = self.assembly.dataset
        out = pd.DataFrame({"iid": candidates, **own_ids(d, candidates), "title": d.titles()[np.asarray(candidates)],
                            "score": scores, "p_like": p_like(scores)})
        return out.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)


def _ids(text, what: str, own: Dataset | None = None) -> list[int]:
    """Space-separated ids (an empty or missing cell: none); anything but whole numbers is refused. own: the
    ids are the source's own item ids, mapped to this dataset's iids."""
    if text is None or (isinstance(text, float) and np.isnan(text)) or not str(text).strip():
        return []
    if own is not None:
        return own.iids_of(str(text).split(), what)
    out = []
    for token in str(text).split():
        try:
            out.append(int(token))
        except ValueError:
            raise DataError(f"{what}: {token!r} is not an id (ids are whole numbers, space-separated; for the "
                            f"source's own ids add --own-ids)") from None
    return out


def _one_id(text, what: str) -> int:
    ids = _ids(text, what)
    if len(ids) != 1:
        raise DataError(f"{what}: {text!r} is not one id (a whole number; for the source's own ids add --own-ids)")
    return ids[0]


def read_rows(path: Path, own: Dataset | None = None) -> tuple[pd.DataFrame, list[list[int]]]:
    """A --rows CSV (uid, history, iid), refused with one line when missing, empty or malformed. own: uid,
    history and iid hold the source's own ids, mapped to this dataset's (the file's kept as user and item).
    Returns the rows and each row's history as the dataset's item ids."""
    if not path.is_file():
        raise DataError(f"{path}: no such file; --rows needs a CSV with columns uid, history, iid")
    try:
        rows = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty; it needs a header line uid,history,iid and one row per request") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable CSV ({str(e).strip()[:200]})") from None
    missing = {"uid", "history", "iid"} - set(rows.columns)
    if missing:
        raise DataError(f"{path}: missing column(s) {sorted(missing)}; need uid, history, iid")
    if rows.empty:
        raise DataError(f"{path} holds a header but no rows; add one row per request")
    if own is not None:  # the file's own ids are kept beside the dataset's, as user and item
        taken = sorted({"user", "item"} & set(rows.columns))
        if taken:
            raise DataError(f"{path}: with --own-ids the uid and iid columns hold your ids and the output keeps "
                            f"them as columns user and item; rename the file's {' and '.join(taken)} column")
        rows.insert(rows.columns.get_loc("uid") + 1, "user", rows["uid"].str.strip())
        rows.insert(rows.columns.get_loc("iid") + 1, "item", rows["iid"].str.strip())
        rows["uid"] = [own.uids_of([v], f"{path} row {r + 1}, column uid")[0] for r, v in enumerate(rows["uid"])]
        rows["iid"] = [_one_own_id(v, f"{path} row {r + 1}, column iid", own) for r, v in enumerate(rows["iid"])]
    else:
        for col in ("uid", "iid"):
            rows[col] = [_one_id(v, f"{path} row {r + 1}, column {col}") for r, v in enumerate(rows[col])]
    histories = [_ids(v, f"{path} row {r + 1}, column history", own) for r, v in enumerate(rows["history"])]
    if own is None:  # (with own ids the file's history stays as written; the dataset's ids are only read)
        rows["history"] = [" ".join(map(str, h)) for h in histories]
    return rows, histories


def user_id(text, what: str, own: Dataset | None = None) -> int:
    """A user id given on the command line: the dataset's uid, or with own the source's own id."""
    return own.uids_of([text], what)[0] if own is not None else _one_id(text, what)


def _one_own_id(text, what: str, own: Dataset) -> int:
    if len(str(text).split()) != 1:
        raise DataError(f"{what}: {text!r} is not one item id")
    return own.iids_of([str(text).strip()], what)[0]


def show_request(rec: Recommender, uid: int, history: list[int]) -> str:
    """The user and their history (oldest first) with titles (and the source's own ids, when the dataset
    keeps them), as printed above a ranking."""
    d = rec.assembly.dataset
    titles, items = d.titles(), d.item_ids()
    who = f"user {uid}"
    if uid and d.users is not None:
        who += f" ({d.users.set_index('uid')['user'].get(uid, '?')})"
    lines = [f"{who}, history (oldest first):" if history else f"{who}, no history"]
    lines += [f"  {i:>6}  {'' if items is None else items[i] + '  '}{titles[i]}" for i in history]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sasrecllm_jax.score", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--rows", type=Path, help="CSV with uid, history, iid")
    p.add_argument("--out", type=Path, help="where to write scores (CSV); default: print")
    p.add_argument("--user", help="a user id (1..the dataset's largest; 0: a user it does not know)")
    p.add_argument("--history", default="", help="item ids the user liked, oldest first (default for a known "
                   "--user: what the dataset knows they liked)")
    p.add_argument("--candidates", default="")
    p.add_argument("--own-ids", action="store_true", help="ids are the source's own (--user as in the dataset's "
                   "users.parquet; --history, --candidates and the iid and history columns of --rows as in its "
                   "items.parquet column item)")
    p.add_argument("--write-run-scores", action="store_true", help="evaluate the run's valid and test splits "
                   "again and write RUN/scores.npz (for python -m sasrecllm_jax.compare)")
    args = p.parse_args(argv)

    def body():
        Recommender.check_run(args.run)
        compile_cache.enable()
        rows = request = None  # the inputs, read and checked before the model is built
        dataset = Recommender.dataset_of(args.run)
        own = dataset if args.own_ids else None
        if args.write_run_scores:
            pass
        elif args.rows:
            rows, histories = read_rows(args.rows, own)
        elif args.user is not None and args.candidates:
            request = (user_id(args.user, "--user", own), _ids(args.history, "--history", own),
                       _ids(args.candidates, "--candidates", own))
        else:
            raise ConfigError("pass --rows FILE, or --user ID --candidates 'ID ID ...' [--history 'ID ...']")
        rec = Recommender(args.run, dataset)
        if args.write_run_scores:
            for split, (now, before) in rec.write_run_scores(args.run).items():
                if before is None:
                    said = ""
                elif abs(now - before) < 1e-6:
                    said = " (as in results.json)"
                else:
                    said = f" (results.json: {before}; other device or precision than the run's)"
                print(f"{split}: AUC {now:.6f}{said}")
            print(f"wrote {args.run / 'scores.npz'}")
            return 0
        if rows is not None:
            rec.check_ids(rows["uid"], histories, rows["iid"], where=str(args.rows))
            rows["score"] = rec.score(rows["uid"], histories, rows["iid"])
            rows["p_like"] = p_like(rows["score"])
            for name, ids in own_ids(rec.assembly.dataset, rows["iid"]).items():
                if name not in rows.columns:  # the source's own item ids beside the iids
                    rows.insert(rows.columns.get_loc("iid") + 1, name, ids)
                elif not args.own_ids:
                    print(f"note: {args.rows} has its own column {name!r}, kept as it is; the items' own ids "
                          f"are not added", file=sys.stderr)
            out = rows
        else:
            uid, history, candidates = request
            history = rec.history_of(uid, history, args.user)
            rec.check_ids([uid] * len(candidates), [history] * len(candidates), candidates)
            print(show_request(rec, uid, history))
            out = rec.rank(uid, history, candidates)
        if args.out:
            out.to_csv(args.out, index=False)
            print(f"wrote {len(out)} scores to {args.out}")
        else:
            print(out.to_string(index=False))
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
