"""The leak audit: how well label-free shortcuts alone separate positives from negatives, per split.

Each shortcut is a number per row that a model could read without learning anything about taste; its
AUC (Mann-Whitney, average ranks for ties) should be near 0.5. One beyond 0.5 +- TOLERANCE is named
in a warning. Item popularity is real signal: it is reported, never warned about.

    history_length     len(his)
    timestamp          the row's time
    position           how many of the user's rows (train, valid and test) are strictly earlier in
                       time, so a positive and its sampled negatives tie
    target_in_history  1 if the target item is in the row's history
    target_is_last     1 if the target item is the history's last item
    popularity         the target's number of positive train rows (signal, not a shortcut)

Also reported, never warned about: each split's positive rate by cause (warm, new user, new item,
both; `sasrecllm_jax.data.dataset.CAUSES`). Uniformly sampled negatives make items that first appear
late mostly positive, so a high rate on new-item rows says that "unseen in train" is itself a cue there.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from sasrecllm_jax.data.dataset import CAUSES, SPLITS, cause_masks
from sasrecllm_jax.metrics import auc

TOLERANCE = 0.03
SHORTCUTS = ("history_length", "timestamp", "position", "target_in_history", "target_is_last")
SIGNALS = ("popularity",)
SHORT_NAMES = {"history_length": "his_len", "timestamp": "time", "position": "position",
               "target_in_history": "in_his", "target_is_last": "is_last", "popularity": "popularity"}


def _positions(df: pd.DataFrame, every: pd.DataFrame) -> np.ndarray:
    """For each row of `df`, how many rows of `every` have its user and a strictly earlier time."""
    times = np.unique(every["timestamp"].to_numpy())
    stride = len(times) + 1

    def key(frame):
        return frame["uid"].to_numpy() * stride + np.searchsorted(times, frame["timestamp"].to_numpy())

    keys = np.sort(key(every))
    q = key(df)
    return np.searchsorted(keys, q, "left") - np.searchsorted(keys, df["uid"].to_numpy() * stride, "left")


def _history_flags(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(target in history, target is the history's last item), 0/1 per row."""
    lengths = np.array([len(h) for h in df["his"]], np.int64)
    flat = np.concatenate([np.asarray(h, np.int64) for h in df["his"]] + [np.zeros(0, np.int64)])
    row = np.repeat(np.arange(len(df)), lengths)
    target = df["iid"].to_numpy()
    inside = np.bincount(row[flat == target[row]], minlength=len(df)) > 0
    last = np.array([len(h) > 0 and h[-1] == t for h, t in zip(df["his"], target)], bool)
    return inside.astype(np.int8), last.astype(np.int8)


def features(df: pd.DataFrame, every: pd.DataFrame, popularity: pd.Series) -> dict[str, np.ndarray]:
    """Every shortcut and signal of the module docstring, one value per row of `df`."""
    inside, last = _history_flags(df)
    return {"history_length": np.array([len(h) for h in df["his"]], np.int64),
            "timestamp": df["timestamp"].to_numpy(), "position": _positions(df, every),
            "target_in_history": inside, "target_is_last": last,
            "popularity": df["iid"].map(popularity).fillna(0).to_numpy()}


def audit(splits: dict[str, pd.DataFrame]) -> dict:
    """The card's `audit`: {tolerance, splits: {name: {rows, positive_rate, auc: {feature: AUC or None},
    positive_rate_by_cause: {cause: rate or None}}}, warnings: [one line per split naming the shortcuts
    beyond 0.5 +- tolerance]}."""
    every = pd.concat([splits[k][["uid", "timestamp"]] for k in ("train", "valid", "test")], ignore_index=True)
    train = splits["train"]
    popularity = train.loc[train["label"] == 1, "iid"].value_counts()
    out, warnings = {}, []
    for name in [k for k in SPLITS if k in splits]:
        df = splits[name]
        labels = df["label"].to_numpy()
        aucs = {k: auc(labels, v) for k, v in features(df, every, popularity).items()}
        aucs = {k: (None if math.isnan(v) else round(v, 4)) for k, v in aucs.items()}
        by_cause = {k: (round(float(labels[m].mean()), 4) if m.any() else None)
                    for k, m in cause_masks(df, train).items()}
        out[name] = {"rows": int(len(df)), "positive_rate": round(float(labels.mean()), 4), "auc": aucs,
                     "positive_rate_by_cause": by_cause}
        beyond = [f"{k} {aucs[k]:.3f}" for k in SHORTCUTS
                  if aucs[k] is not None and abs(aucs[k] - 0.5) > TOLERANCE]
        if beyond:
            warnings.append(f"{name}: shortcut AUC beyond 0.5 +- {TOLERANCE}: {', '.join(beyond)} (each alone "
                            f"separates the labels to that degree without knowing the user's taste)")
    return {"tolerance": TOLERANCE, "splits": out, "warnings": warnings}


def table(result: dict) -> str:
    """The audit as a text table (one row per split), followed by its warnings."""
    names = SHORTCUTS + SIGNALS
    head = f"{'split':<12}{'rows':>10}{'pos':>7}" + "".join(f"{SHORT_NAMES[k]:>11}" for k in names)
    lines = ["audit: AUC of label-free shortcuts (0.5 = no leak; popularity is signal)", head]
    for split, s in result["splits"].items():
        cells = "".join(f"{'-' if s['auc'][k] is None else format(s['auc'][k], '.4f'):>11}" for k in names)
        lines.append(f"{split:<12}{s['rows']:>10,}{s['positive_rate']:>7.3f}" + cells)
    lines.append(f"positive rate by cause:{'':<4}" + "".join(f"{k:>11}" for k in CAUSES))
    for split, s in result["splits"].items():
        rates = s.get("positive_rate_by_cause", {})
        lines.append(f"{split:<27}" + "".join(f"{'-' if rates.get(k) is None else format(rates[k], '.3f'):>11}"
                                                for k in CAUSES))
    lines += [f"warning: {w}" for w in result["warnings"]]
    return "\n".join(lines)
