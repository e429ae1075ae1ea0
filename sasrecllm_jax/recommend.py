"""Top-K recommendations from a finished run: the ID encoder retrieves, the hybrid re-ranks.

    python -m sasrecllm_jax.recommend --run runs/quickstart --history "5 9 31" [--k 10] [--retrieve 50]
    python -m sasrecllm_jax.recommend --run runs/quickstart --user 12 --history "5 9 31" --out top.csv
    python -m sasrecllm_jax.recommend --run runs/mine --own-ids --history "B0001 B0042"   # your item ids

The run's encoder (SASRec or MF) scores every item the user has not interacted with (the history, and
the user's rows in the dataset when --user names a known user; items without train rows by their titles'
vectors with model.mapper.new_items: text) and keeps the best --retrieve of them;
a run that scores with an LLM then re-ranks those by its own score (the Yes probability), and the best
K are printed with their titles, or written as CSV or JSON (--out, by its suffix). A run without an
encoder (TALLRec, ICL) ranks the items given with --candidates instead. Item ids are the dataset's
(DATASET/items.parquet, which also maps them to the source's own ids: column `item`, shown beside iid in
the output); a user id of 0 (the default) is a user the dataset does not know.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from sasrecllm_jax import compile_cache
from sasrecllm_jax.data.dataset import Dataset
from sasrecllm_jax.errors import ConfigError, DataError, run_command
from sasrecllm_jax.evaluate import Scorer, id_rows, score_split
from sasrecllm_jax.models.hybrid import Hybrid
from sasrecllm_jax.score import Recommender, own_ids, p_like, user_id
from sasrecllm_jax.train import groups


def unseen_items(rec: Recommender, user: int, history: list[int]) -> np.ndarray:
    """Item ids 1..num_items minus the history and, for a known user, every item of the user's rows."""
    known = set(history)
    if user:
        for df in rec.assembly.dataset.splits.values():
            known.update(df.loc[df["uid"] == user, "iid"].tolist())
    return np.setdiff1d(np.arange(1, rec.assembly.dataset.num_items + 1), np.fromiter(known, np.int64, len(known)))


def encoder_scores(rec: Recommender, user: int, history: list[int], items: np.ndarray) -> np.ndarray:
    """The run's ID encoder's score of each item for this user and history; for a hybrid run whose items
    without train rows show the vectors their titles predict (model.mapper.new_items: text), the hybrid's
    ID score, which scores those items by their titles' vectors (and offset) as the run does."""
    encoder = rec.cfg.model.encoder
    df = pd.DataFrame({"uid": user, "iid": items, "label": 0, "timestamp": 0,
                       "his": [np.asarray(history, np.int64)] * len(items), "not_cold": 1})
    rows = rec.assembly.encoder.encode_rows("retrieval", df, "none")
    if rec.prompt == "hybrid" and rec.cfg.model.mapper.new_items == "text":
        score, _ = id_rows(rec.assembly.model("hybrid", deterministic=True), Hybrid.id_term, rec.params, rows)
        return np.asarray(score, np.float64)
    scorer = Scorer(rec.assembly.model("none", deterministic=True))
    return score_split(scorer, groups.select(rec.params, {encoder}), rows, 4096, 1, False)


def recommend(rec: Recommender, history: list[int], k: int = 10, user: int = 0, retrieve: int = 50,
              candidates: list[int] | None = None) -> pd.DataFrame:
    """The best k items: retrieved by the encoder (or the given candidates), re-ranked by the run's own score."""
    d = rec.assembly.dataset
    rec.check_user(user)
    rec.check_items([*history, *(candidates or [])])
    if k < 1 or retrieve < k:
        raise ConfigError(f"--k {k} --retrieve {retrieve}: ask for k >= 1 items out of at least k retrieved")
    has_encoder = rec.cfg.model.encoder in rec.params
    if candidates:
        pool = np.unique(np.asarray(candidates, np.int64))
        first = encoder_scores(rec, user, history, pool) if has_encoder else np.full(len(pool), np.nan)
    elif has_encoder:
        items = unseen_items(rec, user, history)
        scores = encoder_scores(rec, user, history, items)
        keep = np.argsort(-scores, kind="stable")[:retrieve]
        pool, first = items[keep], scores[keep]
    else:
        raise ConfigError(f"a {rec.cfg.train.method} run has no ID encoder to retrieve items with; pass "
                          f"--candidates 'ID ID ...' to rank those")
    out = pd.DataFrame({"iid": pool, **own_ids(d, pool), "title": d.titles()[pool], "encoder_score": first})
    if rec.prompt != "none":  # the run's own score re-ranks what the encoder retrieved
        out["score"] = rec.score([user] * len(pool), [history] * len(pool), pool)
    else:
        out["score"] = first
    out["p_like"] = p_like(out["score"])
    out = out.sort_values("score", ascending=False, kind="stable").head(k).reset_index(drop=True)
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    return out


def write(table: pd.DataFrame, path: Path) -> None:
    if path.suffix == ".json":
        path.write_text(table.to_json(orient="records", indent=1))
    elif path.suffix == ".csv":
        table.to_csv(path, index=False)
    else:
        raise ConfigError(f"--out {path}: write .csv or .json")


def _ids(text: str, what: str, own: Dataset | None = None) -> list[int]:
    """Item ids separated by spaces or commas; own: the source's own ids, mapped to the dataset's iids."""
    if own is not None:
        return own.iids_of(text.replace(",", " ").split(), what)
    try:
        return [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise DataError(f"{what} {text!r}: give item ids separated by spaces, e.g. '5 9 31' (the source's own "
                        f"ids: add --own-ids)") from None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sasrecllm_jax.recommend", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a finished run folder")
    p.add_argument("--history", default="", help="item ids the user liked, oldest first (default for a known "
                   "--user: what the dataset knows they liked)")
    p.add_argument("--user", help="a dataset user id (default: a new user, 0)")
    p.add_argument("--k", type=int, default=10, help="items to recommend")
    p.add_argument("--retrieve", type=int, default=50, help="items the encoder retrieves for re-ranking")
    p.add_argument("--candidates", default="", help="rank these item ids instead of retrieving")
    p.add_argument("--own-ids", action="store_true", help="--user, --history and --candidates are the source's "
                   "own ids (the dataset's users.parquet and items.parquet column item; leave --user out for a "
                   "new user)")
    p.add_argument("--out", type=Path, help="write the list as .csv or .json")
    args = p.parse_args(argv)

    def body():
        compile_cache.enable()
        dataset = Recommender.dataset_of(args.run)  # the request is checked before the model loads
        own = dataset if args.own_ids else None
        history, candidates = _ids(args.history, "--history", own), _ids(args.candidates, "--candidates", own)
        user = user_id(args.user, "--user", own) if args.user not in (None, "0") else 0
        rec = Recommender(args.run, dataset)
        history = rec.history_of(user, history, args.user)
        table = recommend(rec, history, args.k, user, args.retrieve, candidates or None)
        if args.out:
            write(table, args.out)
            print(f"wrote {len(table)} recommendations to {args.out}")
        else:
            with pd.option_context("display.max_colwidth", 60, "display.width", 160):
                print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
