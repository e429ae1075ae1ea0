"""Score rows or rank candidates with a finished run.

    python -m sasrecllm_jax.score --run runs/quickstart --rows rows.csv --out scores.csv
        rows.csv: uid, history (space-separated item ids, oldest first), iid
    python -m sasrecllm_jax.score --run runs/quickstart --user 12 --history "5 9 31" --candidates "7 8 40"
    python -m sasrecllm_jax.score --run runs/old --write-run-scores   # RUN/scores.npz for a run made without it

Item ids are the dataset's (see DATASET/items.parquet). Scores are the model's logits (higher = more
likely to be liked); `p_like` is sigmoid(score).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from sasrecllm_jax.assembly import Assembly
from sasrecllm_jax.config import Config, from_dict, load_yaml
from sasrecllm_jax.errors import ConfigError, DataError, run_command
from sasrecllm_jax.evaluate import Scorer, evaluate, score_split
from sasrecllm_jax.run_folder.scores import SCORES_FILE, save_scores
from sasrecllm_jax.train import groups
from sasrecllm_jax.train.checkpoint import Store
from sasrecllm_jax.train.strategies import resolve_phases, scoring_prompt


class Recommender:
    """A run folder's final model, ready to score."""

    def __init__(self, run: str | Path):
        run = Path(run)
        if not (run / "final").exists() or not (run / "config.yaml").exists():
            raise ConfigError(f"{run}: not a finished run (no final/ checkpoint); train it with train.py first")
        self.cfg = from_dict(Config, load_yaml((run / "config.yaml").read_text()), str(run / "config.yaml"))
        phases = resolve_phases(self.cfg, str(run / "config.yaml"))
        self.prompt = scoring_prompt(self.cfg.train.method, phases)
        self.assembly, params = Assembly.for_run(self.cfg)
        params = groups.select(params, groups.prompt_modules(self.prompt, self.cfg.model.encoder))
        restored, _ = Store(run / "final").restore(groups.group_trees(params))
        self.params = groups.replace_groups(params, restored)
        self.scorer = Scorer(self.assembly.model(self.prompt, deterministic=True))

    def score(self, uids, histories, iids, batch_size: int = 32) -> np.ndarray:
        n_items = self.assembly.dataset.num_items
        for h, i in zip(histories, iids):
            bad = [x for x in [*h, i] if not 1 <= x <= n_items]
            if bad:
                raise DataError(f"item id {bad[0]} is not in the dataset (ids run 1..{n_items})")
        df = pd.DataFrame({"uid": np.asarray(uids, np.int64), "iid": np.asarray(iids, np.int64), "label": 0,
                           "timestamp": 0, "his": [np.asarray(h, np.int64) for h in histories], "not_cold": 1})
        data = self.assembly.encoder.encode_rows("request", df, self.prompt)
        return score_split(self.scorer, self.params, data, batch_size, self.cfg.data.pad_multiple,
                           self.prompt != "none")

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
        titles = self.assembly.dataset.titles()
        out = pd.DataFrame({"iid": candidates, "title": titles[np.asarray(candidates)], "score": scores})
        return out.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)


def _ids(text: str) -> list[int]:
    return [int(x) for x in str(text).split()] if str(text).strip() and str(text) != "nan" else []


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sasrecllm_jax.score", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--rows", type=Path, help="CSV with uid, history, iid")
    p.add_argument("--out", type=Path, help="where to write scores (CSV); default: print")
    p.add_argument("--user", type=int)
    p.add_argument("--history", default="")
    p.add_argument("--candidates", default="")
    p.add_argument("--write-run-scores", action="store_true", help="evaluate the run's valid and test splits "
                   "again and write RUN/scores.npz (for python -m sasrecllm_jax.compare)")
    args = p.parse_args(argv)

    def body():
        rec = Recommender(args.run)
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
        if args.rows:
            rows = pd.read_csv(args.rows)
            missing = {"uid", "history", "iid"} - set(rows.columns)
            if missing:
                raise ConfigError(f"{args.rows}: missing column(s) {sorted(missing)}; need uid, history, iid")
            rows["score"] = rec.score(rows["uid"], [_ids(h) for h in rows["history"]], rows["iid"])
            rows["p_like"] = 1 / (1 + np.exp(-rows["score"]))
            out = rows
        elif args.user is not None and args.candidates:
            out = rec.rank(args.user, _ids(args.history), _ids(args.candidates))
        else:
            raise ConfigError("pass --rows FILE, or --user ID --candidates 'ID ID ...' [--history 'ID ...']")
        if args.out:
            out.to_csv(args.out, index=False)
            print(f"wrote {len(out)} scores to {args.out}")
        else:
            print(out.to_string(index=False))
        return 0

    return run_command(body)

if __name__ == "__main__":
    sys.exit(main())
