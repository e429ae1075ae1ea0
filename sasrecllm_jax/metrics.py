"""AUC, user-averaged AUC and log-loss, in NumPy.

AUC is the Mann-Whitney statistic with average ranks, so a tied positive/negative pair counts 1/2.
UAUC is the mean of per-user AUCs over users that have both labels; users with one label (or one
row) are skipped and counted.
`paired_auc_test` compares two scorers on the same rows (DeLong, DeLong & Clarke-Pearson 1988, with
the midrank form of Sun & Xu 2014): far tighter than comparing two AUCs' separate error bars, because
both scorers face the same hard and easy rows. `paired_uauc_test` does the same for UAUC, with users
as the independent units (a Student t interval: a split may have only a few dozen users).
"""
from __future__ import annotations

import math

import numpy as np


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), np.float64)
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(x)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2.0  # mean of 1-based ranks s+1..e
    return ranks


def auc(labels, scores) -> float:
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, np.float64)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _average_ranks(scores)
    return float((r[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _per_user(users, labels, *scores) -> tuple[np.ndarray, ...]:
    """Each user's AUC under each scorer, one row per user (NaN for a user with one label)."""
    users, labels = np.asarray(users), np.asarray(labels)
    order = np.argsort(users, kind="stable")
    users, labels = users[order], labels[order]
    scores = [np.asarray(s)[order] for s in scores]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else np.zeros(0, int)
    ends = np.r_[starts[1:], len(users)]
    return tuple(np.array([auc(labels[s:e], x[s:e]) for s, e in zip(starts, ends)], np.float64) for x in scores)


def uauc(users, labels, scores) -> tuple[float, int, int]:
    """(mean per-user AUC, users counted, users skipped for having one label)."""
    (values,) = _per_user(users, labels, scores)
    good = values[~np.isnan(values)]
    return (float(good.mean()) if len(good) else float("nan")), len(good), len(values) - len(good)


def logloss(labels, scores) -> float:
    """Mean binary cross-entropy of sigmoid(score), computed stably from the logit."""
    y = np.asarray(labels, np.float64)
    s = np.asarray(scores, np.float64)
    return float(np.mean(np.maximum(s, 0) - s * y + np.log1p(np.exp(-np.abs(s)))))


PARTS = ("all", "warm", "cold", "new_user", "new_item")  # new_user / new_item overlap (a row can be both)


def report(users, labels, scores, parts: dict[str, np.ndarray]) -> dict:
    """{part: {auc, uauc, logloss, n, users_counted, users_skipped}} for each named row mask in `parts`
    (e.g. SplitData.parts(): all, warm, cold, new_user, new_item); a part without rows has n 0 and None."""
    out = {}
    for name, sel in parts.items():
        sel = np.asarray(sel).astype(bool)
        if not sel.any():
            out[name] = {"auc": None, "uauc": None, "logloss": None, "n": 0}
            continue
        u, counted, skipped = uauc(users[sel], labels[sel], scores[sel])
        a = auc(labels[sel], scores[sel])
        out[name] = {"auc": None if np.isnan(a) else a, "uauc": None if np.isnan(u) else u,
                     "logloss": logloss(labels[sel], scores[sel]), "n": int(sel.sum()),
                     "users_counted": counted, "users_skipped": skipped}
    return out


def warm_cold(warm) -> dict[str, np.ndarray]:
    """The all / warm / cold row masks of a warm flag per row."""
    warm = np.asarray(warm).astype(bool)
    return {"all": np.ones_like(warm), "warm": warm, "cold": ~warm}


def _placements(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components: for each positive the share of negatives it outscores, for each
    negative the share of positives that outscore it (ties count one half). Their means are the AUC."""
    r_all = _average_ranks(scores)
    pos, neg = scores[labels], scores[~labels]
    v10 = (r_all[labels] - _average_ranks(pos)) / len(neg)
    v01 = 1.0 - (r_all[~labels] - _average_ranks(neg)) / len(pos)
    return v10, v01


def _paired_result(value_a: float, value_b: float, diff: float, se: float, n: int, df: int | None = None) -> dict:
    """A paired test's record: the two values, their difference, its standard error, the 95% interval
    and the two-sided p (NaN in, NaN out). Normal (df None) or Student t with df degrees of freedom."""
    from scipy import stats  # a second to import: only the paired tests need it
    dist = stats.norm() if df is None else stats.t(df)
    if se > 0 or math.isnan(se):
        p = float(2 * dist.sf(abs(diff) / se))
    else:  # no spread: the two scorers agree on every pair (AUC) or on every user's difference (UAUC)
        p = 1.0 if diff == 0 else 0.0
    half = float(dist.ppf(0.975)) * se
    return {"auc_a": value_a, "auc_b": value_b, "diff": diff, "se": se,
            "ci95": [diff - half, diff + half], "p": p, "n": n}


def paired_auc_test(labels, scores_a, scores_b) -> dict:
    """AUC(b) - AUC(a) on the same rows, its standard error, 95% interval and two-sided p (DeLong)."""
    labels = np.asarray(labels).astype(bool)
    a, b = np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)
    if not (labels.shape == a.shape == b.shape) or labels.ndim != 1:
        raise ValueError(f"paired_auc_test needs one label and two scores per row; got shapes "
                         f"{labels.shape}, {a.shape}, {b.shape}")
    return paired_auc_means_test(labels, [a], [b])


def paired_auc_means_test(labels, scores_a: list, scores_b: list) -> dict:
    """mean AUC of the scorers `scores_b` - mean AUC of `scores_a` on the same rows (e.g. a method's seeds
    against a baseline's): DeLong's covariance of all the scorers' AUCs, the contrast's variance from it.
    It counts the test rows' noise in the seed means, not how much a further seed would move them.
    One scorer on each side is paired_auc_test (the variance of AUC(b) - AUC(a) from their covariance)."""
    labels = np.asarray(labels).astype(bool)
    scores = [np.asarray(s, np.float64) for s in (*scores_a, *scores_b)]
    if not scores_a or not scores_b or any(s.shape != labels.shape for s in scores) or labels.ndim != 1:
        raise ValueError(f"paired_auc_means_test needs one label and, on each side, one or more scores per row; "
                         f"got shapes {labels.shape}, {[s.shape for s in scores]}")
    m, n = int(labels.sum()), int((~labels).sum())
    if m < 2 or n < 2:
        return _paired_result(*[float("nan")] * 4, n=len(labels))
    v10, v01 = map(np.stack, zip(*(_placements(labels, s) for s in scores)))
    c = np.concatenate([np.full(len(scores_a), -1.0 / len(scores_a)), np.full(len(scores_b), 1.0 / len(scores_b))])
    var = c @ np.atleast_2d(np.cov(v10)) @ c / m + c @ np.atleast_2d(np.cov(v01)) @ c / n
    aucs = v10.mean(axis=1)
    auc_a, auc_b = float(aucs[:len(scores_a)].mean()), float(aucs[len(scores_a):].mean())
    return _paired_result(auc_a, auc_b, float(c @ aucs), math.sqrt(max(float(var), 0.0)), n=len(labels))


def paired_uauc_test(users, labels, scores_a, scores_b) -> dict:
    """UAUC(b) - UAUC(a) on the same rows: the mean over users (those with both labels) of their AUC
    differences. Users are the independent units here, so the standard error is the spread of the
    per-user differences over the square root of their number, and interval and p are Student t's with
    one degree of freedom less than the users (CoLLM's ML-1M test split has 51 users on cold rows; a
    normal interval would be too narrow for a handful). Keys as paired_auc_test's, with auc_a/auc_b the
    two UAUCs and n the users counted."""
    labels = np.asarray(labels).astype(bool)
    a, b = np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)
    users = np.asarray(users)
    if not (users.shape == labels.shape == a.shape == b.shape) or labels.ndim != 1:
        raise ValueError(f"paired_uauc_test needs one user, label and two scores per row; got shapes "
                         f"{users.shape}, {labels.shape}, {a.shape}, {b.shape}")
    ua, ub = _per_user(users, labels, a, b)
    keep = ~np.isnan(ua)  # one label: NaN under both scorers alike
    return paired_mean_test(ua[keep], ub[keep])


def paired_mean_test(values_a, values_b) -> dict:
    """mean(b) - mean(a) over paired rows (e.g. each test positive's NDCG@10 under two scorers): the rows
    are the independent units, a Student t interval and p with one degree of freedom less than the rows.
    Keys as paired_auc_test's, with auc_a / auc_b the two means."""
    a, b = np.asarray(values_a, np.float64), np.asarray(values_b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_mean_test needs two values per row; got shapes {a.shape}, {b.shape}")
    k = len(a)
    if k < 2:
        return _paired_result(*[float("nan")] * 4, n=k)
    d = b - a
    return _paired_result(float(a.mean()), float(b.mean()), float(d.mean()), float(d.std(ddof=1) / math.sqrt(k)),
                          n=k, df=k - 1)
