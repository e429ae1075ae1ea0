"""HR@K / NDCG@K of one positive among sampled candidates, hand-computed on toy matrices (in the style of
RecBole's metric tests), and the candidate sampling."""
import numpy as np
import pytest

from sasrecllm_jax.ranking import hit_rate_and_ndcg, ranking_rows, sample_candidates

L2 = lambda r: 1 / np.log2(r + 1)  # the NDCG of a hit at 1-based rank r

TOY = np.array([[0.9, 0.1, 0.2, 0.3],   # positive first: rank 1
                [0.5, 0.9, 0.1, 0.7],   # two above: rank 3
                [0.1, 0.9, 0.8, 0.7]])  # last: rank 4


def test_hand_computed_toy_matrix():
    got = hit_rate_and_ndcg(TOY, ks=(1, 3, 5))  # K = 5 is over the 4 candidates: every row is a hit
    want = {"hr@1": 1 / 3, "ndcg@1": 1 / 3, "hr@3": 2 / 3, "ndcg@3": (1 + 0.5) / 3,
            "hr@5": 1.0, "ndcg@5": (1 + 0.5 + L2(4)) / 3}
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-12), k
    rows = ranking_rows(TOY, ks=(3,))
    np.testing.assert_array_equal(rows["rank"], [1, 3, 4])
    np.testing.assert_array_equal(rows["hr@3"], [1, 1, 0])
    np.testing.assert_allclose(rows["ndcg@3"], [1, 0.5, 0])
    assert hit_rate_and_ndcg(TOY) == pytest.approx({"hr@5": 1, "ndcg@5": (1 + 0.5 + L2(4)) / 3,
                                                    "hr@10": 1, "ndcg@10": (1 + 0.5 + L2(4)) / 3})


def test_ties_expected_pessimistic_optimistic():
    tied = np.array([[0.5, 0.5, 0.5, 0.1]])  # the positive ties with two negatives: rank 1, 2 or 3
    exp = ranking_rows(tied, ks=(1, 2, 3))
    assert exp["rank"][0] == 2
    assert (exp["hr@1"][0], exp["hr@2"][0], exp["hr@3"][0]) == pytest.approx((1 / 3, 2 / 3, 1))
    assert exp["ndcg@2"][0] == pytest.approx((1 + L2(2)) / 3)
    assert exp["ndcg@3"][0] == pytest.approx((1 + L2(2) + L2(3)) / 3)
    pess = ranking_rows(tied, ks=(2, 3), ties="pessimistic")
    assert (pess["rank"][0], pess["hr@2"][0], pess["hr@3"][0], pess["ndcg@3"][0]) == (3, 0, 1, 0.5)
    opt = ranking_rows(tied, ks=(1,), ties="optimistic")
    assert (opt["rank"][0], opt["hr@1"][0], opt["ndcg@1"][0]) == (1, 1, 1)
    # a tie straddling the cut-off: one negative above, two tied, so rank 2, 3 or 4 around K = 2
    straddle = ranking_rows(np.array([[0.5, 0.9, 0.5, 0.5, 0.1]]), ks=(2,))
    assert (straddle["hr@2"][0], straddle["ndcg@2"][0]) == pytest.approx((1 / 3, L2(2) / 3))


def test_a_constant_scorer_is_at_chance_and_column_order_does_not_matter():
    flat = np.zeros((7, 100))
    got = hit_rate_and_ndcg(flat)
    assert got["hr@10"] == pytest.approx(0.1) and got["hr@5"] == pytest.approx(0.05)
    assert got["ndcg@10"] == pytest.approx(sum(L2(r) for r in range(1, 11)) / 100)
    assert hit_rate_and_ndcg(flat, ties="pessimistic")["hr@10"] == 0
    assert hit_rate_and_ndcg(flat, ties="optimistic")["hr@10"] == 1
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, (50, 20)).astype(float)  # many ties
    shuffled = np.concatenate([scores[:, :1], rng.permuted(scores[:, 1:], axis=1)], axis=1)
    assert hit_rate_and_ndcg(scores, ks=(1, 5)) == pytest.approx(hit_rate_and_ndcg(shuffled, ks=(1, 5)))


def test_expected_ties_equal_the_mean_over_random_tie_breaks():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 3, (5, 8)).astype(float)
    exact = ranking_rows(scores, ks=(2, 4))
    draws = []
    for _ in range(4000):  # break ties with a tiny random jitter, positive included
        draws.append(ranking_rows(scores + 1e-6 * rng.random(scores.shape), ks=(2, 4), ties="pessimistic"))
    for key in ("hr@2", "ndcg@2", "hr@4", "ndcg@4", "rank"):
        np.testing.assert_allclose(np.mean([d[key] for d in draws], axis=0), exact[key], atol=0.03)


def test_edge_cases_are_refused_or_exact():
    assert hit_rate_and_ndcg(np.array([[1.0]]), ks=(1,)) == {"hr@1": 1.0, "ndcg@1": 1.0}  # no negatives
    with pytest.raises(ValueError, match="row 1 of the scores has a NaN"):
        hit_rate_and_ndcg(np.array([[1.0, 0.0], [np.nan, 0.0]]))
    with pytest.raises(ValueError, match=r"\[rows, candidates\]"):
        hit_rate_and_ndcg(np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="ties = 'random'"):
        hit_rate_and_ndcg(TOY, ties="random")
    with pytest.raises(ValueError, match="K = 0"):
        hit_rate_and_ndcg(TOY, ks=(0,))
    with pytest.raises(ValueError, match="no rows"):
        hit_rate_and_ndcg(np.zeros((0, 5)))


def test_sampled_candidates_are_distinct_unseen_and_seeded():
    rng = np.random.default_rng(0)
    num_items = 300
    interacted = {u: set(rng.choice(np.arange(1, num_items + 1), size, replace=False).tolist())
                  for u, size in [(1, 5), (2, 150), (3, 190), (4, 0)]}  # 2, 3: dense users (complement path)
    uids = np.array([1, 2, 3, 4, 1])
    iids = np.array([next(iter(interacted[u])) if interacted[u] else 7 for u in uids])
    cand = sample_candidates(uids, iids, interacted, num_items, n=99, seed=0)
    assert cand.shape == (5, 100) and cand.dtype == np.int64
    np.testing.assert_array_equal(cand[:, 0], iids)
    for row, u in zip(cand, uids):
        assert len(set(row.tolist())) == 100
        assert not set(row[1:].tolist()) & (interacted[u] | {row[0]})
        assert row[1:].min() >= 1 and row[1:].max() <= num_items
    np.testing.assert_array_equal(cand, sample_candidates(uids, iids, interacted, num_items, seed=0))
    assert (cand[:, 1:] != sample_candidates(uids, iids, interacted, num_items, seed=1)[:, 1:]).any()
    # a row's candidates depend on (seed, uid, iid) only, not on the other rows sampled with it
    np.testing.assert_array_equal(sample_candidates(uids[2:3], iids[2:3], interacted, num_items)[0], cand[2])
    np.testing.assert_array_equal(cand[0], cand[4])  # the same (user, positive) twice: the same candidates
    # negatives are spread over the free items, not clustered
    many = sample_candidates(np.zeros(200, int), np.arange(1, 201), {}, num_items, n=50)
    counts = np.bincount(many[:, 1:].ravel(), minlength=num_items + 1)[1:]
    assert counts.min() > 10 and counts.max() < 60  # expected about 33 each


def test_sampling_refuses_users_without_enough_unseen_items():
    with pytest.raises(ValueError, match="user 3 has only 9 items they never interacted with, 99 negatives"):
        sample_candidates([3], [1], {3: set(range(1, 12))}, num_items=20)
    with pytest.raises(ValueError, match="1-D of equal length"):
        sample_candidates([1, 2], [1], {}, num_items=20, n=3)
