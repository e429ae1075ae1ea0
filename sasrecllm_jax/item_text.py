"""Encoder item vectors for items without train rows, regressed from their titles (`model.mapper.new_items: text`).

An item the ID encoder never trained on has no vector of its own. Its title does: each item's title
features are the mean of the LLM's input embeddings of its tokens, and a ridge regression from those
features (standardised over the items with train rows, with an unpenalised constant) to the encoder's item
vectors of the items with train rows predicts every item's vector. What an item shows is that prediction
less the examples' mean vector, shrunk toward zero: the deviation its title predicts. The mean would add
the same <user vector, mean> to every such item of a user, a level that ranks users rather than items;
a fusion's offset (unknown_id_score: offset) places those rows instead. The ridge strength is the one of RIDGES whose
vectors rank the validation rows best when every row's item is shown by its title: an item with train rows
gets its leave-one-out prediction (the regression fitted without it, the standardisation and the mean kept:
a leak of order 1/items), an item without gets the full fit,
and each row's score is <user vector, that item vector>, plus the encoder's user and item terms when it has
them (model.sasrec.bias), as in the ID score the table enters.
"""
from __future__ import annotations

import numpy as np

from sasrecllm_jax.errors import DataError
from sasrecllm_jax.metrics import auc

RIDGES = (1.0, 10.0, 100.0, 300.0, 1e3, 3e3, 1e4, 3e4, 1e5, 3e5, 1e6)
MAX_TITLE_TOKENS = 32


def title_features(tokenizer, embedding, titles) -> np.ndarray:
    """[len(titles), hidden]: the mean input embedding of each title's first MAX_TITLE_TOKENS tokens (encoded
    as they follow a space in a prompt); NaN for a title without tokens (id 0, missing titles). `embedding`
    [vocab, hidden] may live on a device: only the titles' tokens' rows are read from it."""
    encoded = tokenizer.encode_batch([" " + str(t) if t else "" for t in titles], add_special_tokens=False)
    ids = [np.asarray(enc.ids[:MAX_TITLE_TOKENS], np.int64) for enc in encoded]
    vocab = np.unique(np.concatenate([np.zeros(0, np.int64), *ids]))
    rows = np.asarray(embedding[vocab], np.float64) if len(vocab) else np.zeros((0, embedding.shape[1]))
    out = np.full((len(titles), embedding.shape[1]), np.nan, np.float64)
    for k, tokens in enumerate(ids):
        if len(tokens):
            out[k] = rows[np.searchsorted(vocab, tokens)].mean(0)
    return out


def _design(features: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Features standardised over the seen items (a title without tokens reads as their mean): every column
    sums to zero over the seen items."""
    ref = features[seen & ~np.isnan(features).any(1)]
    if len(ref) < 2:
        raise DataError(f"model.mapper.new_items: text regresses item vectors on titles, and only {len(ref)} item(s) "
                        f"with train rows have a title with tokens: give the items titles (items table, column title)")
    mu, sd = ref.mean(0), ref.std(0)
    return np.where(np.isnan(features), 0.0, (features - mu) / np.where(sd > 0, sd, 1.0))


def ridge_fit(x: np.ndarray, rows: np.ndarray, y: np.ndarray, ridge: float, svd=None) -> tuple[np.ndarray, np.ndarray]:
    """(the fit's prediction for every row of x, the same with each example row's own leave-one-out
    prediction): the ridge regression of y on x[rows] with an unpenalised constant, min_{b, w}
    |b + x[rows] w - y|^2 + ridge |w|^2, for x whose columns sum to zero over rows (then b is y's mean and
    w the ridge of the centred y on x[rows]). `svd`: that of x[rows], when several ridges share it."""
    u, s, vt = svd if svd is not None else np.linalg.svd(x[rows], full_matrices=False)
    mean = y.mean(0)
    shrink = s / (s ** 2 + ridge)
    table = mean + x @ (vt.T @ (shrink[:, None] * (u.T @ (y - mean))))
    # the hat matrix's diagonal (how much each example fits itself): the constant's 1/n plus the ridge's
    hat = 1.0 / len(rows) + (u ** 2) @ (s * shrink)
    loo = table.copy()
    loo[rows] = y - (y - table[rows]) / (1.0 - hat)[:, None]
    return table, loo


def fit_item_vectors(features: np.ndarray, item_vectors: np.ndarray, seen: np.ndarray, user_vectors: np.ndarray,
                     iid: np.ndarray, label: np.ndarray, ridges=RIDGES, terms: np.ndarray | None = None
                     ) -> tuple[np.ndarray, dict]:
    """(table [num_items + 1, d] float32: every item's title-predicted deviation from the mean vector, an
    item with train rows its leave-one-out prediction (what item_dropout shows: as a new item's, from the
    other items), what the fit found).

    features [num_items + 1, F] (title_features), item_vectors [num_items + 1, d] (the encoder's), seen
    [num_items + 1] bool (the items with train rows: the regression's examples); user_vectors [N, d], iid [N]
    and label [N]: the validation rows that pick the ridge strength (module docstring); terms [N]: what the
    encoder adds to <user, item> on those rows (its user and item terms), if anything."""
    seen = np.asarray(seen, bool)
    if len(np.unique(label)) < 2:
        says = f"their {len(label)} label(s) are all {label[0]}" if len(label) else "there are none"
        raise DataError(f"model.mapper.new_items: text picks its ridge strength by AUC on the validation rows, and "
                        f"{says}: the split needs positive and negative rows")
    x = _design(features, seen)
    rows = np.flatnonzero(seen)
    y = np.asarray(item_vectors, np.float64)[rows]
    svd = np.linalg.svd(x[rows], full_matrices=False)
    users = np.asarray(user_vectors, np.float64)
    best = None
    for ridge in ridges:
        _, loo = ridge_fit(x, rows, y, ridge, svd)
        loo -= y.mean(0)  # the deviations (module docstring)
        valid_auc = auc(label, np.einsum("nd,nd->n", users, loo[iid]) + (0.0 if terms is None else terms))
        if best is None or valid_auc > best[1]:
            best = (ridge, valid_auc, loo)
    ridge, valid_auc, table = best
    return table.astype(np.float32), {"ridge": ridge, "valid_auc": float(valid_auc), "items": int(len(rows)),
                                      "rows": int(len(label))}
