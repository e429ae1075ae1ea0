"""Item vectors regressed from titles (model.mapper.new_items: text): the ridge fit's leave-one-out
predictions against refits without each item, a planted linear signal recovered for items without train
rows, the title features, and clear refusals."""
import re
from types import SimpleNamespace

import numpy as np
import pytest

from sasrecllm_jax.errors import DataError
from sasrecllm_jax.item_text import RIDGES, _design, fit_item_vectors, ridge_fit, title_features
from sasrecllm_jax.metrics import auc


def test_leave_one_out_predictions_equal_refits_without_the_item():
    """ridge_fit (an unpenalised constant, columns centred over the examples) against the same ridge
    solved directly: [x, 1] with no penalty on the constant, on all examples and again without each one;
    its leave-one-out shortcut (residual / (1 - hat)) equals the refits."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 6))
    rows = np.arange(3, 30)  # items 0..2 are unseen
    x = x - x[rows].mean(0)  # what _design gives: columns summing to zero over the examples
    y = rng.normal(size=(30, 3)) + 5.0  # far from zero: a penalised constant would pull it there
    a = np.concatenate([x, np.ones((30, 1))], axis=1)

    def solve(idx, ridge):
        penalty = ridge * np.diag([1.0] * 6 + [0.0])
        return np.linalg.solve(a[idx].T @ a[idx] + penalty, a[idx].T @ y[idx])

    for ridge in (0.5, 7.0, 1e6):
        table, loo = ridge_fit(x, rows, y[rows], ridge)
        np.testing.assert_allclose(table, a @ solve(rows, ridge), atol=1e-9)
        for r in rows:
            np.testing.assert_allclose(loo[r], a[r] @ solve(rows[rows != r], ridge), atol=1e-9)
        np.testing.assert_array_equal(loo[:3], table[:3])  # unseen items: the full fit
    np.testing.assert_allclose(table, np.broadcast_to(y[rows].mean(0), table.shape), atol=1e-3)  # shrunk to the mean


def test_a_planted_title_signal_ranks_items_without_train_rows():
    """Item vectors that are a shared vector plus a linear map of the title features plus noise; rows score
    <user, the mapped part>. Fitted on the seen items, the table (the predicted deviations from the mean
    vector) ranks the unseen items' rows almost as the mapped parts do, and its ridge is one of the grid's,
    picked on the rows."""
    rng = np.random.default_rng(1)
    n_items, f, d = 400, 12, 4
    feats = rng.normal(size=(n_items + 1, f))
    feats[0] = np.nan  # id 0: padding, no title
    true = np.nan_to_num(feats) @ rng.normal(size=(f, d))
    seen = np.zeros(n_items + 1, bool)
    seen[1:301] = True
    # every encoder vector also holds a shared part (the mean vector), which the table leaves out
    vectors = 4.0 + np.where(seen[:, None], true + 0.3 * rng.normal(size=true.shape), rng.normal(size=true.shape))
    users = rng.normal(size=(2000, d))
    iid = rng.integers(1, n_items + 1, 2000)
    label = (np.einsum("nd,nd->n", users, true[iid]) + 0.5 * rng.normal(size=2000) > 0).astype(np.float32)
    table, found = fit_item_vectors(feats, vectors, seen, users, iid, label)
    new = ~seen[iid]
    got = auc(label[new], np.einsum("nd,nd->n", users[new], table[iid[new]]))
    best = auc(label[new], np.einsum("nd,nd->n", users[new], true[iid[new]]))
    noise = auc(label[new], np.einsum("nd,nd->n", users[new], vectors[iid[new]]))
    assert got > best - 0.03 and noise < 0.6 < got
    assert table.dtype == np.float32 and table.shape == vectors.shape
    assert np.abs(table[seen].mean(0)).max() < 0.05 and np.abs(table[~seen].mean(0)).max() < 1.0  # deviations
    assert found["items"] == 300 and found["rows"] == 2000 and found["ridge"] in RIDGES and found["valid_auc"] > 0.8
    # the valid AUC it reports is the returned table's, every row's item shown by its title
    assert found["valid_auc"] == pytest.approx(auc(label, np.einsum("nd,nd->n", users, table[iid].astype(np.float64))), abs=1e-6)
    # with the encoder's user and item terms (model.sasrec.bias) the pick reads the ID score they are part of
    terms = 3.0 * rng.normal(size=2000)
    _, with_terms = fit_item_vectors(feats, vectors, seen, users, iid, label, terms=terms)
    table_t, _ = fit_item_vectors(feats, vectors, seen, users, iid, label, ridges=(with_terms["ridge"],))
    assert with_terms["valid_auc"] == pytest.approx(
        auc(label, np.einsum("nd,nd->n", users, table_t[iid].astype(np.float64)) + terms), abs=1e-6)
    assert with_terms["valid_auc"] < found["valid_auc"] - 0.05  # the terms are noise here: they count


def test_title_features_are_mean_token_embeddings():
    """Each title's features are the mean input embedding of its tokens (encoded after a space, at most 32);
    a title without tokens is NaN, and reads as the seen items' mean in the regression."""
    vocab = {" Heat": [3], " Toy Story": [1, 2], " Long": list(range(40))}

    class Tok:
        def encode_batch(self, texts, add_special_tokens):
            assert add_special_tokens is False
            return [SimpleNamespace(ids=[i % 5 for i in vocab.get(t, [])]) for t in texts]

    emb = np.arange(15, dtype=np.float32).reshape(5, 3)
    out = title_features(Tok(), emb, np.array(["", "Toy Story", "Heat", "Long"], dtype=object))
    assert np.isnan(out[0]).all()
    np.testing.assert_allclose(out[1], emb[[1, 2]].mean(0))
    np.testing.assert_allclose(out[2], emb[3])
    np.testing.assert_allclose(out[3], emb[[i % 5 for i in range(32)]].mean(0))
    x = _design(out, np.array([False, True, True, True]))
    np.testing.assert_allclose(x[0], [0, 0, 0])  # standardised: the seen items' mean
    np.testing.assert_allclose(x[1:].sum(0), 0, atol=1e-12)


def test_refusals_say_what_to_do():
    rng = np.random.default_rng(2)
    feats, vectors = rng.normal(size=(6, 3)), rng.normal(size=(6, 2))
    seen = np.array([False, True, True, True, False, False])
    users, iid = rng.normal(size=(4, 2)), np.array([1, 2, 4, 5])
    with pytest.raises(DataError, match=re.escape("4 label(s) are all 1.0: the split needs positive and negative rows")):
        fit_item_vectors(feats, vectors, seen, users, iid, np.ones(4))
    with pytest.raises(DataError, match="there are none: the split needs positive and negative rows"):
        fit_item_vectors(feats, vectors, seen, users[:0], iid[:0], np.ones(0))
    feats[1:3] = np.nan
    with pytest.raises(DataError, match="give the items titles"):
        fit_item_vectors(feats, vectors, seen, users, iid, np.array([0, 1, 0, 1.0]))
