"""Metrics against values worked out by hand (ties, users with one label, users with one row)."""
import math

import numpy as np

from sasrecllm_jax.metrics import auc, logloss, report, uauc


def test_auc_by_hand():
    # positives 0.8, 0.4; negatives 0.5, 0.1: pairs (0.8>0.5) (0.8>0.1) (0.4<0.5) (0.4>0.1) -> 3/4
    assert auc([1, 1, 0, 0], [0.8, 0.4, 0.5, 0.1]) == 0.75
    assert auc([1, 0], [0.3, 0.3]) == 0.5                       # a tie counts one half
    # positives 0.5, 0.5; negatives 0.5, 0.2: pairs tie, win, tie, win -> (0.5 + 1 + 0.5 + 1) / 4
    assert auc([1, 1, 0, 0], [0.5, 0.5, 0.5, 0.2]) == 0.75
    assert auc([0, 0, 1], [3, 2, 1]) == 0.0
    assert math.isnan(auc([1, 1], [0.1, 0.2]))                 # one label: undefined


def test_uauc_skips_users_with_one_label():
    users = [1, 1, 1, 2, 2, 3, 4]
    labels = [1, 0, 0, 1, 0, 1, 0]   # user 3 one row, user 4 one row: skipped
    scores = [0.9, 0.1, 0.95, 0.2, 0.3, 0.5, 0.5]
    # user 1: positive 0.9 vs negatives 0.1 (win), 0.95 (loss) -> 0.5; user 2: 0.2 vs 0.3 -> 0
    value, counted, skipped = uauc(users, labels, scores)
    assert (value, counted, skipped) == (0.25, 2, 2)


def test_logloss_and_report():
    assert math.isclose(logloss([1, 0], [0.0, 0.0]), math.log(2))
    assert math.isclose(logloss([1], [2.0]), math.log1p(math.exp(-2.0)))
    r = report(np.array([1, 1, 2, 2]), np.array([1, 0, 1, 0]), np.array([0.9, 0.1, 0.2, 0.3]), np.array([1, 1, 0, 0]))
    assert r["warm"]["auc"] == 1.0 and r["cold"]["auc"] == 0.0 and r["all"]["n"] == 4
    assert r["all"]["auc"] == 0.75 and r["all"]["uauc"] == 0.5
