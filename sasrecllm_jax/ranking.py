"""Sampled ranking evaluation: HR@K and NDCG@K of one positive among C candidates, and the sampling.

The protocol (SASRec's, and most sequential recommenders' papers): every test row is a user with a
positive item; it is ranked among itself and n = 99 items the user never interacted with, so
C = 100 candidates. With the positive at 1-based rank r,

    HR@K = 1 if r <= K else 0          NDCG@K = 1 / log2(r + 1) if r <= K else 0

(one relevant item, so the ideal DCG is 1). K larger than C simply counts every row as a hit.

Ties. Let g be the number of negatives scoring strictly above the positive and t the number scoring
exactly the same. `ties="expected"` (the default) averages the metric over every order of the tied
items, i.e. the positive's rank is uniform on g+1 .. g+t+1: HR@K = |{g+1..g+t+1} ∩ {1..K}| / (t+1) and
NDCG@K the mean of 1/log2(r+1) over those ranks. That is what a random tie-break gives on average, does
not depend on the candidates' column order, and gives a constant scorer chance level (HR@K = K/C).
`"pessimistic"` puts the positive after all tied items (r = g+t+1), `"optimistic"` before them
(r = g+1; a constant scorer then looks perfect, which is why it is not the default). Scores that are NaN
are refused.
"""
from __future__ import annotations

import numpy as np

TIES = ("expected", "pessimistic", "optimistic")


def _counts(scores) -> tuple[np.ndarray, np.ndarray]:
    """(g, t) per row: negatives scoring above the positive (column 0), and equal to it."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] < 1:
        raise ValueError(f"scores must be [rows, candidates] with the positive in column 0, got shape {s.shape}")
    bad = np.flatnonzero(np.isnan(s).any(axis=1))
    if len(bad):
        raise ValueError(f"row {bad[0]} of the scores has a NaN ({len(bad)} rows in all); rank finite scores")
    pos, neg = s[:, :1], s[:, 1:]
    return (neg > pos).sum(axis=1), (neg == pos).sum(axis=1)


def ranking_rows(scores, ks=(5, 10), ties: str = "expected") -> dict[str, np.ndarray]:
    """Per-row metrics [N] ("hr@K", "ndcg@K" for every K, and "rank", the positive's 1-based rank, the
    mean over tie orders with ties="expected"), so that rows can be grouped before averaging."""
    if ties not in TIES:
        raise ValueError(f"ties = {ties!r}; choose one of {list(TIES)}")
    g, t = _counts(scores)
    if ties == "pessimistic":
        g, t = g + t, np.zeros_like(t)
    elif ties == "optimistic":
        t = np.zeros_like(t)
    c = np.asarray(scores).shape[1]
    gain = 1.0 / np.log2(np.arange(2, c + 2))  # gain[r - 1]: the DCG of a hit at rank r
    cum = np.concatenate([[0.0], np.cumsum(gain)])  # cum[p]: the DCG of ranks 1..p summed
    out = {"rank": g + 1 + t / 2.0}
    for k in ks:
        if int(k) != k or k < 1:
            raise ValueError(f"K = {k!r}; cut-offs are positive integers")
        lo, hi = np.minimum(g, k), np.minimum(g + t + 1, k)
        out[f"hr@{k}"] = (hi - lo) / (t + 1)
        # ranks g+1..g+t+1, those within K summed; without ties the hit's own gain, exactly
        summed = np.where(t == 0, np.where(g < k, gain[np.minimum(g, c - 1)], 0.0), cum[hi] - cum[lo])
        out[f"ndcg@{k}"] = summed / (t + 1)
    return out


def hit_rate_and_ndcg(scores, ks=(5, 10), ties: str = "expected") -> dict[str, float]:
    """{"hr@K": ..., "ndcg@K": ...} averaged over rows; scores [N, C] with the positive in column 0."""
    rows = ranking_rows(scores, ks, ties)
    if not len(rows["rank"]):
        raise ValueError("no rows to rank")
    return {f"{m}@{k}": float(rows[f"{m}@{k}"].mean()) for k in ks for m in ("hr", "ndcg")}


def sample_candidates(rows_uid, rows_iid, interacted: dict, num_items: int, n: int = 99, seed: int = 0) -> np.ndarray:
    """[N, n + 1] item ids: each row's positive first, then n distinct items in 1..num_items that the user
    never interacted with (nor the positive), in random order.

    Each row draws from its own generator seeded by (seed, uid, iid), so a row's candidates do not depend on
    which other rows are sampled with it. interacted: uid -> the item ids of all the user's interactions
    (every split, so that no known item poses as a negative); a user absent from it has none."""
    uids, iids = np.asarray(rows_uid, np.int64), np.asarray(rows_iid, np.int64)
    if uids.shape != iids.shape or uids.ndim != 1:
        raise ValueError(f"rows_uid and rows_iid must be 1-D of equal length, got {uids.shape} and {iids.shape}")
    out = np.empty((len(uids), n + 1), np.int64)
    out[:, 0] = iids
    for r, (u, i) in enumerate(zip(uids.tolist(), iids.tolist())):
        seen = np.fromiter({*interacted.get(u, ()), i}, np.int64)
        free = num_items - int(((seen >= 1) & (seen <= num_items)).sum())
        if free < n:
            raise ValueError(f"user {u} has only {free} items they never interacted with, {n} negatives are asked "
                             f"for; lower n or drop the user")
        rng = np.random.default_rng([seed, u, i])
        if free < 2 * n:  # dense users: choose from the complement directly
            pool = np.setdiff1d(np.arange(1, num_items + 1), seen, assume_unique=False)
            out[r, 1:] = rng.choice(pool, n, replace=False)
            continue
        got = np.empty(0, np.int64)
        while len(got) < n:  # rejection: at least half of 1..num_items is free, so few rounds
            draw = rng.integers(1, num_items + 1, 2 * n)
            draw = draw[~np.isin(draw, seen) & ~np.isin(draw, got)]
            _, first = np.unique(draw, return_index=True)
            got = np.concatenate([got, draw[np.sort(first)]])
        out[r, 1:] = got[:n]
    return out
