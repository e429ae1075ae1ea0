"""HR@K and NDCG@K of a run on the test split, under the sampled protocol of ranking.py.

Every test positive (label 1) is scored against eval.ranking_negatives items its user never
interacted with (in any split), with the positive's own user and history: the candidates differ
only in the item, so an LLM scores them as rows of ordinary batches (the same prompt with another
target title). Metrics are averaged over the positives of each part (all, warm, cold, new_user,
new_item: the positive row's cause), and each positive's rank is kept for paired comparisons.
"""
from __future__ import annotations

import dataclasses
import hashlib

import jax
import numpy as np
import pandas as pd

from sasrecllm_jax.assembly import Assembly
from sasrecllm_jax.config import Config
from sasrecllm_jax.data.pipeline import SplitData
from sasrecllm_jax.evaluate import Scorer, score_rows
from sasrecllm_jax.ranking import ranking_rows, sample_candidates
from sasrecllm_jax.run_folder.scores import rows_fingerprint


@dataclasses.dataclass
class RankedRows:
    """The ranked positives of a split: their row indices in the split, their parts, and per-row metrics."""
    rows: np.ndarray                   # [P] indices into the evaluated split
    parts: dict[str, np.ndarray]       # part -> [P] bool
    per_row: dict[str, np.ndarray]     # "rank", "hr@K", "ndcg@K" -> [P]
    skipped: int                       # positives whose user has too few items left to sample from


def skip_reason(cfg: Config, prompt: str) -> str | None:
    """Why a run does not rank (None: it does)."""
    if cfg.eval.ranking_negatives <= 0:
        return "eval.ranking_negatives is 0"
    if prompt != "none" and jax.default_backend() == "cpu" and not cfg.eval.cpu_ranking_llm:
        return ("an LLM scores this run and the backend is a CPU (100 prompts per test positive); set "
                "eval.cpu_ranking_llm: true to rank anyway")
    return None


def interactions(assembly: Assembly) -> dict[int, set]:
    """user -> every item of any of the user's rows, in every split (none of them may pose as a negative)."""
    frames = [df[["uid", "iid"]] for name, df in assembly.dataset.splits.items() if name != "valid_small"]
    both = pd.concat(frames, ignore_index=True)
    return {int(u): set(items.tolist()) for u, items in both.groupby("uid")["iid"]}


def rank_split(assembly: Assembly, scorer: Scorer, params: dict, data: SplitData, prompt: str) -> RankedRows:
    """Rank the positives of `data` (a seeded subset of eval.ranking_max_rows of them when set)."""
    cfg, e = assembly.cfg, assembly.cfg.eval
    n, num_items = e.ranking_negatives, assembly.dataset.num_items
    seen = interactions(assembly)
    positives = np.flatnonzero(data.label == 1)
    free = np.array([num_items - len(seen.get(int(u), ())) for u in data.uid[positives]])
    skipped = int((free < n + 1).sum())
    positives = positives[free >= n + 1]
    if e.ranking_max_rows and len(positives) > e.ranking_max_rows:
        positives = np.sort(np.random.default_rng(e.ranking_seed).choice(positives, e.ranking_max_rows, replace=False))
    candidates = sample_candidates(data.uid[positives], data.iid[positives], seen, num_items, n, e.ranking_seed)
    c = candidates.shape[1]
    table = pd.DataFrame({"uid": np.repeat(data.uid[positives], c).astype(np.int64),
                          "iid": candidates.reshape(-1), "label": 0, "timestamp": 0,
                          "his": [np.asarray(data.histories[r], np.int64) for r in positives for _ in range(c)],
                          "not_cold": 1})
    rows = assembly.encoder.encode_rows(f"{data.name} candidates", table, prompt)
    scores = score_rows(scorer, params, rows, cfg.train.eval_batch_size, cfg.data.pad_multiple, prompt,
                        cfg.train.collab, share_prefix=cfg.eval.share_prefix).reshape(len(positives), c)
    parts = {k: v[positives] for k, v in data.parts().items()}
    return RankedRows(positives, parts, ranking_rows(scores, e.ranking_ks), skipped)


def ranking_report(ranked: RankedRows, ks) -> dict:
    """{part: {"hr@K", "ndcg@K" for each K, "n"}}: means over the part's ranked positives (None without any)."""
    out = {}
    for part, mask in ranked.parts.items():
        n = int(mask.sum())
        out[part] = {f"{m}@{k}": (float(ranked.per_row[f"{m}@{k}"][mask].mean()) if n else None)
                     for k in ks for m in ("hr", "ndcg")}
        out[part]["n"] = n
    return out


def ranked_arrays(ranked: RankedRows, data: SplitData, e) -> dict[str, np.ndarray]:
    """What scores.npz keeps of a ranking (split "test_ranking"): the positives' rows in the test split, their
    per-row metrics, and a fingerprint of the protocol (rows, negatives, seed): runs are paired only on
    the same candidates."""
    h = hashlib.sha256(f"{rows_fingerprint(data)}|{e.ranking_negatives}|{e.ranking_seed}".encode())
    h.update(np.ascontiguousarray(ranked.rows, np.int64).tobytes())
    return {"test_ranking.row": ranked.rows.astype(np.int32),
            **{f"test_ranking.{k}": np.asarray(v, np.float64) for k, v in ranked.per_row.items()},
            "test_ranking.rows": np.array(h.hexdigest()[:16])}
