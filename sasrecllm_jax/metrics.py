"""AUC, user-averaged AUC and log-loss (REFERENCE.md section 1), in NumPy.

AUC is the Mann-Whitney statistic with average ranks, so a tied positive/negative pair counts 1/2.
UAUC is the mean of per-user AUCs over users that have both labels; users with one label (or one
row) are skipped and counted.
"""
from __future__ import annotations

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


def uauc(users, labels, scores) -> tuple[float, int, int]:
    """(mean per-user AUC, users counted, users skipped for having one label)."""
    users, labels, scores = np.asarray(users), np.asarray(labels), np.asarray(scores)
    order = np.argsort(users, kind="stable")
    users, labels, scores = users[order], labels[order], scores[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    values = [auc(labels[s:e], scores[s:e]) for s, e in zip(starts, ends)]
    good = [v for v in values if not np.isnan(v)]
    return (float(np.mean(good)) if good else float("nan")), len(good), len(values) - len(good)


def logloss(labels, scores) -> float:
    """Mean binary cross-entropy of sigmoid(score), computed stably from the logit."""
    y = np.asarray(labels, np.float64)
    s = np.asarray(scores, np.float64)
    return float(np.mean(np.maximum(s, 0) - s * y + np.log1p(np.exp(-np.abs(s)))))


def report(users, labels, scores, warm) -> dict:
    """{all, warm, cold} -> {auc, uauc, logloss, n, users_counted, users_skipped}."""
    out = {}
    warm = np.asarray(warm).astype(bool)
    for name, sel in (("all", np.ones_like(warm)), ("warm", warm), ("cold", ~warm)):
        if not sel.any():
            out[name] = {"auc": None, "uauc": None, "logloss": None, "n": 0}
            continue
        u, counted, skipped = uauc(users[sel], labels[sel], scores[sel])
        a = auc(labels[sel], scores[sel])
        out[name] = {"auc": None if np.isnan(a) else a, "uauc": None if np.isnan(u) else u,
                     "logloss": logloss(labels[sel], scores[sel]), "n": int(sel.sum()),
                     "users_counted": counted, "users_skipped": skipped}
    return out
