"""Metrics against values worked out by hand (ties, users with one label, users with one row)."""
import math

import numpy as np
import pytest

from sasrecllm_jax.metrics import auc, logloss, report, uauc, warm_cold


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
    r = report(np.array([1, 1, 2, 2]), np.array([1, 0, 1, 0]), np.array([0.9, 0.1, 0.2, 0.3]),
               warm_cold(np.array([1, 1, 0, 0])))
    assert r["warm"]["auc"] == 1.0 and r["cold"]["auc"] == 0.0 and r["all"]["n"] == 4
    assert r["all"]["auc"] == 0.75 and r["all"]["uauc"] == 0.5
    # parts may overlap (a new user on a new item is in both): each is reported on its own rows
    new_item = np.array([0, 1, 1, 0], bool)
    r = report(np.array([1, 1, 2, 2]), np.array([1, 0, 1, 0]), np.array([0.9, 0.1, 0.2, 0.3]),
               {"new_user": np.array([0, 0, 1, 1], bool), "new_item": new_item, "none": np.zeros(4, bool)})
    assert r["new_user"]["auc"] == 0.0 and r["new_item"]["auc"] == 1.0 and r["new_item"]["n"] == 2
    assert r["none"] == {"auc": None, "uauc": None, "logloss": None, "n": 0}
    assert math.isclose(r["new_item"]["logloss"], logloss([0, 1], [0.1, 0.2]))


def test_paired_auc_test_by_hand():
    """DeLong on 2 positives, 2 negatives. a = [.8, .4 | .5, .1]: positives beat 2/2 and 1/2 negatives
    (V10 = [1, .5]); negatives are beaten by 1/2 and 2/2 positives (V01 = [.5, 1]); AUC .75. b ranks
    perfectly (V10 = V01 = [1, 1]), AUC 1. var = var(V10a)/2 + var(V01a)/2 = .125/2 + .125/2 = .125."""
    from sasrecllm_jax.metrics import paired_auc_test
    r = paired_auc_test([1, 1, 0, 0], [0.8, 0.4, 0.5, 0.1], [0.9, 0.6, 0.5, 0.1])
    assert (r["auc_a"], r["auc_b"], r["diff"]) == (0.75, 1.0, 0.25)
    assert math.isclose(r["se"], math.sqrt(0.125))
    assert math.isclose(r["p"], math.erfc(0.25 / math.sqrt(0.125) / math.sqrt(2)))  # z = 0.7071: p = 0.4795
    same = paired_auc_test([1, 0, 1, 0], [1, 2, 3, 4], [1, 2, 3, 4])
    assert (same["diff"], same["se"], same["p"]) == (0.0, 0.0, 1.0)
    assert math.isnan(paired_auc_test([1, 0], [1, 2], [2, 1])["diff"])  # too few rows of a label


def test_paired_auc_test_equals_the_pairwise_definition():
    """The midrank shortcut against DeLong's components written out over every positive/negative pair,
    with many ties (scores rounded to one decimal)."""
    from sasrecllm_jax.metrics import paired_auc_test
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.4
    a = np.round(rng.normal(size=300) + y, 1)
    b = np.round(0.5 * a + rng.normal(size=300) + 0.5 * y, 1)

    def components(s):
        psi = (s[y][:, None] > s[~y][None, :]) + 0.5 * (s[y][:, None] == s[~y][None, :])
        return psi.mean(axis=1), psi.mean(axis=0)

    (v10a, v01a), (v10b, v01b) = components(a), components(b)
    var = (np.var(v10a - v10b, ddof=1) / y.sum() + np.var(v01a - v01b, ddof=1) / (~y).sum())
    r = paired_auc_test(y, a, b)
    assert math.isclose(r["auc_a"], auc(y, a)) and math.isclose(r["auc_b"], auc(y, b))
    assert math.isclose(r["diff"], v10b.mean() - v10a.mean())
    assert math.isclose(r["se"], math.sqrt(var))
    assert r["ci95"][0] < r["diff"] < r["ci95"][1]


def test_paired_uauc_test_by_hand():
    """User 1: a ranks its pair right (AUC 1), b wrong (0). User 2: a puts its positive between its two
    negatives (1/2), b ranks it first (1). User 3 has only positives: skipped. Per-user differences
    d = [-1, +1/2]: UAUC a 3/4, b 1/2, difference -1/4, standard error sd(d) / sqrt(2) = 1.0607 / 1.4142.
    Two users leave one degree of freedom: Student's t with 1 df is Cauchy, whose tails are closed-form,
    P(|T| > x) = 1 - 2 atan(x) / pi and its 97.5% point tan(0.475 pi) = 12.706 (a normal's is 1.96)."""
    from sasrecllm_jax.metrics import paired_uauc_test
    users = [1, 1, 2, 2, 2, 3]
    y = [1, 0, 1, 0, 0, 1]
    r = paired_uauc_test(users, y, [0.9, 0.1, 0.5, 0.6, 0.1, 0.3], [0.1, 0.9, 0.7, 0.6, 0.1, 0.3])
    assert (r["auc_a"], r["auc_b"], r["diff"], r["n"]) == (0.75, 0.5, -0.25, 2)
    assert math.isclose(r["se"], 0.75) and math.isclose(r["p"], 1 - 2 * math.atan(0.25 / 0.75) / math.pi)  # 0.795
    half = 0.75 * math.tan(0.475 * math.pi)
    assert np.allclose(r["ci95"], [-0.25 - half, -0.25 + half])
    assert math.isnan(paired_uauc_test([1, 1], [1, 0], [1, 2], [2, 1])["diff"])  # one user: no spread
    with pytest.raises(ValueError, match="one user, label and two scores per row"):
        paired_uauc_test([1, 2], [1, 0, 1], [1, 2, 3], [1, 2, 3])


def test_paired_uauc_test_agrees_with_uauc():
    """Its two UAUCs are metrics.uauc's (which results.json reports), users in any order and with ties."""
    from sasrecllm_jax.metrics import paired_uauc_test
    rng = np.random.default_rng(1)
    users = rng.integers(0, 40, 600)
    y = rng.random(600) < 0.5
    a, b = np.round(rng.normal(size=600) + y, 1), rng.normal(size=600) + 0.3 * y
    r = paired_uauc_test(users, y, a, b)
    assert math.isclose(r["auc_a"], uauc(users, y, a)[0]) and math.isclose(r["auc_b"], uauc(users, y, b)[0])
    assert r["n"] == uauc(users, y, a)[1] and r["ci95"][0] < r["diff"] < r["ci95"][1]


def _fake_run(path, valid, test, labels_v, labels_t):
    path.mkdir()
    np.savez(path / "scores.npz", **{
        "valid_small.score": valid, "valid_small.label": labels_v, "valid_small.warm": np.ones_like(labels_v),
        "valid_small.rows": np.array("v"), "test.score": test, "test.label": labels_t,
        "test.warm": (np.arange(len(test)) % 2).astype(np.int8), "test.rows": np.array("t")})
    return path


def test_late_fusion_picks_its_weight_on_valid(tmp_path):
    """Two scorers that each see half of the signal: the mixture beats both, with a weight strictly
    inside (0, 1); a scorer that is perfect on valid takes enough weight to stay perfect."""
    from sasrecllm_jax.compare import late_fusion
    rng = np.random.default_rng(0)
    n = 4000
    y_v, y_t = (rng.random(n) < 0.5).astype(np.int8), (rng.random(n) < 0.5).astype(np.int8)
    u_v, u_t = rng.normal(size=(2, n)), rng.normal(size=(2, n))
    sig = lambda y, u: y[None] + u  # two independent noisy views of the label
    a = _fake_run(tmp_path / "a", sig(y_v, u_v)[0], sig(y_t, u_t)[0], y_v, y_t)
    b = _fake_run(tmp_path / "b", 10 * sig(y_v, u_v)[1] + 3, 10 * sig(y_t, u_t)[1] + 3, y_v, y_t)  # other scale
    f = late_fusion(a, b)
    assert 0.3 <= f["weight_b"] <= 0.7  # equal information, any scale: about half each
    fused_vs_a, fused_vs_b = f["test"]["all"]["AUC"], f["test_vs_b"]["all"]["AUC"]
    assert fused_vs_a["diff"] > 0.02 and fused_vs_b["diff"] > 0.02 and fused_vs_a["p"] < 1e-3
    assert math.isclose(fused_vs_a["auc_b"], auc(y_t, f["test_scores"]))
    assert "UAUC" not in f["test"]["all"]  # these scores.npz hold no users
    # a + gate x b is an increasing affine map of the fused scores: the same ranking of every row
    a_t, b_t = sig(y_t, u_t)[0], 10 * sig(y_t, u_t)[1] + 3
    (slope, shift), *_ = np.linalg.lstsq(np.stack([a_t + f["gate_b"] * b_t, np.ones(n)], 1), f["test_scores"], rcond=None)
    assert slope > 0 and np.allclose(slope * (a_t + f["gate_b"] * b_t) + shift, f["test_scores"], rtol=0, atol=1e-9)
    assert 0.02 < f["gate_b"] < 0.3  # b's scale is 10x a's: about a tenth
    perfect = _fake_run(tmp_path / "perfect", y_v + 0.0, sig(y_t, u_t)[1], y_v, y_t)
    f = late_fusion(a, perfect)  # the first weight that separates valid perfectly (ties keep the smaller)
    assert f["valid_auc"] == 1.0 and 0.5 < f["weight_b"] < 1.0
    assert late_fusion(a, a)["weight_b"] == 0.0


def test_fitted_fusion_in_its_scorers_units_ranks_as_the_fusion():
    """fit_late_fusion with a standardised on its known rows (ref_a) and w below 1 (the residual hybrid's
    start): a on known rows, abstain_score on the rest, plus gate_b x b, is an increasing affine map of the
    fused scores, and the fit's valid AUC is theirs."""
    from sasrecllm_jax.fusion import fit_late_fusion
    r = np.random.default_rng(3)
    n = 3000
    new = r.random(n) < 0.3
    y = (r.random(n) < np.where(new, 0.7, 0.4)).astype(np.int8)
    a = np.where(new, 0.0, 3 * y + r.normal(size=n) + 5)  # a's stand-in on new rows is 0: not its own scale
    b = 0.2 * (y + r.normal(size=n))
    f = fit_late_fusion(y, a, b, new, weights=np.linspace(0, 1, 21)[:-1], ref_a=a[~new])
    assert f["weight_b"] < 1 and f["gate_b"] > 0
    fused = f["fuse"](a, b, new)
    residual = np.where(new, f["abstain_score"], a) + f["gate_b"] * b
    (slope, shift), *_ = np.linalg.lstsq(np.stack([residual, np.ones(n)], 1), fused, rcond=None)
    assert slope > 0 and np.allclose(slope * residual + shift, fused, rtol=0, atol=1e-9)
    assert math.isclose(auc(y, residual), f["valid_auc"], abs_tol=1e-12)
    assert f["abstain_score"] > a[~new].mean()  # new rows are mostly positive: placed above the average


def test_split_gate_drops_b_where_it_is_noise_and_keeps_it_where_a_abstains():
    """fit_late_fusion with gate_rows: where b is noise on the rows a knows (and a is good there), b's gate on
    them goes to 0, while on the abstaining rows (where b alone ranks) it stays; the residual form (a, or
    abstain_score on those rows, plus gate_b or gate_b_rows x b) is an increasing affine map of the fused
    scores, and the fit's valid AUC is theirs and no lower than the shared gate's; b moved by a constant
    (a raw logit's mean) fits the same gates, the constant taken back by abstain_score. The same rows with
    offset; a mask that is not the abstaining rows is refused."""
    from sasrecllm_jax.fusion import fit_late_fusion
    r = np.random.default_rng(5)
    n = 4000
    new = r.random(n) < 0.4
    y = (r.random(n) < np.where(new, 0.6, 0.4)).astype(np.int8)
    a = np.where(new, 0.0, 2 * y + r.normal(size=n))
    b = np.where(new, y + r.normal(size=n), 3 * r.normal(size=n))  # signal on new rows, loud noise on known ones
    weights = np.linspace(0, 1, 21)[1:-1]
    shared = fit_late_fusion(y, a, b, new, weights=weights, ref_a=a[~new])
    f = fit_late_fusion(y, a, b, new, weights=weights, ref_a=a[~new], gate_rows=new)
    assert f["gate_b"] == 0.0 and f["gate_b_rows"] > 0 and shared["gate_b"] > 0
    assert f["valid_auc"] > shared["valid_auc"] + 0.002
    fused = f["fuse"](a, b, new)
    residual = np.where(new, f["abstain_score"], a) + np.where(new, f["gate_b_rows"], f["gate_b"]) * b
    (slope, shift), *_ = np.linalg.lstsq(np.stack([residual, np.ones(n)], 1), fused, rcond=None)
    assert slope > 0 and np.allclose(slope * residual + shift, fused, rtol=0, atol=1e-9)
    assert math.isclose(auc(y, residual), f["valid_auc"], abs_tol=1e-12)
    moved = fit_late_fusion(y, a, b + 40, new, weights=weights, ref_a=a[~new], gate_rows=new)
    assert (moved["gate_b"], moved["gate_b_rows"], moved["valid_auc"]) == pytest.approx((f["gate_b"], f["gate_b_rows"], f["valid_auc"]))
    residual = np.where(new, moved["abstain_score"], a) + np.where(new, moved["gate_b_rows"], moved["gate_b"]) * (b + 40)
    assert math.isclose(auc(y, residual), f["valid_auc"], abs_tol=1e-12)
    off = fit_late_fusion(y, a, b, weights=weights, ref_a=a[~new], offset=new, gate_rows=new)
    residual = a + new * off["offset_score"] + np.where(new, off["gate_b_rows"], off["gate_b"]) * b
    assert off["gate_b"] == 0.0 and math.isclose(auc(y, residual), off["valid_auc"], abs_tol=1e-12)
    with pytest.raises(ValueError, match="split gate"):
        fit_late_fusion(y, a, b, new, weights=weights, gate_rows=~new)


def test_a_held_gate_leaves_the_known_rows_to_a_and_fits_the_new_rows_alone():
    """fit_late_fusion with gate_rows and hold_gate: where b adds to a on the known rows (so the free split
    gate keeps it there), the held fit gives gate_b 0: the known rows rank exactly as a does and keep their
    place against each other, and the new rows' gate and constant are the best on the grid with g held at 0
    (no (g', c) pair beats its valid AUC); without gate_rows it is refused."""
    from sasrecllm_jax.fusion import ABSTAIN_GRID, fit_late_fusion
    r = np.random.default_rng(8)
    n = 3000
    new = r.random(n) < 0.3
    y = (r.random(n) < 0.5).astype(np.int8)
    a = np.where(new, 0.0, y + r.normal(size=n))
    b = y + r.normal(size=n)  # signal everywhere: the free fit keeps it on known rows
    weights = np.linspace(0, 1, 21)[1:-1]
    free = fit_late_fusion(y, a, b, new, weights=weights, ref_a=a[~new], gate_rows=new)
    held = fit_late_fusion(y, a, b, new, weights=weights, ref_a=a[~new], gate_rows=new, hold_gate=True)
    assert free["gate_b"] > 0 and held["gate_b"] == 0.0 and held["gate_b_rows"] > 0
    assert held["valid_auc"] < free["valid_auc"]
    fused = held["fuse"](a, b, new)
    np.testing.assert_array_equal(np.argsort(fused[~new], kind="stable"), np.argsort(a[~new], kind="stable"))
    residual = np.where(new, held["abstain_score"] + held["gate_b_rows"] * b, a)
    assert math.isclose(auc(y, residual), held["valid_auc"], abs_tol=1e-12)
    za, zb = (a - a[~new].mean()) / a[~new].std(), (b - b.mean()) / b.std()
    best = max(auc(y, np.where(new, c + w / (1 - w) * zb, za)) for w in weights for c in ABSTAIN_GRID)
    assert math.isclose(held["valid_auc"], best, abs_tol=1e-12)
    with pytest.raises(ValueError, match="pass gate_rows"):
        fit_late_fusion(y, a, b, new, weights=weights, hold_gate=True)


def test_shifted_aucs_are_the_aucs_of_the_shifted_scores():
    """The c search of a split gate: shifted_aucs equals auc of the scores with the rows shifted, for every
    shift, with ties (scores on a 0.1 grid) counted a half."""
    from sasrecllm_jax.fusion import ABSTAIN_GRID, shifted_aucs
    r = np.random.default_rng(6)
    for n in (40, 2000):
        y, rows = r.random(n) < 0.4, r.random(n) < 0.3
        s = np.round(r.normal(size=n), 1)
        want = [auc(y, s + c * rows) for c in ABSTAIN_GRID]
        np.testing.assert_allclose(shifted_aucs(y, s, rows, ABSTAIN_GRID), want, rtol=0, atol=1e-12)


def test_offset_fusion_keeps_a_ranking_the_offset_rows():
    """fit_late_fusion with `offset`: on the offset rows a still ranks (unlike abstaining) and one number
    places them; a + offset_score on those rows, plus gate_b x b, is an increasing affine map of the fused
    scores. Where a's scores on those rows carry signal on a shifted scale, the offset fusion beats both
    the abstaining one and the plain one on valid."""
    from sasrecllm_jax.fusion import fit_late_fusion
    r = np.random.default_rng(4)
    n = 4000
    new = r.random(n) < 0.4
    y = (r.random(n) < np.where(new, 0.75, 0.4)).astype(np.int8)
    a = np.where(new, 2 * y + r.normal(size=n) - 3, 3 * y + r.normal(size=n))  # new rows: weaker, shifted down
    b = 0.2 * (y + 2 * r.normal(size=n))
    weights = np.linspace(0, 1, 21)[1:-1]
    f = fit_late_fusion(y, a, b, weights=weights, ref_a=a[~new], offset=new)
    fused = f["fuse"](a, b, new)
    residual = a + new * f["offset_score"] + f["gate_b"] * b
    (slope, shift), *_ = np.linalg.lstsq(np.stack([residual, np.ones(n)], 1), fused, rcond=None)
    assert slope > 0 and np.allclose(slope * residual + shift, fused, rtol=0, atol=1e-9)
    assert math.isclose(auc(y, residual), f["valid_auc"], abs_tol=1e-12)
    assert f["offset_score"] > 3  # new rows are mostly positive: lifted above the shift that hides it
    abstain = fit_late_fusion(y, a, b, new, weights=weights, ref_a=a[~new])
    plain = fit_late_fusion(y, a, b, weights=weights)
    assert f["valid_auc"] > abstain["valid_auc"] + 0.005 and f["valid_auc"] > plain["valid_auc"] + 0.005
    with pytest.raises(ValueError, match="not both"):
        fit_late_fusion(y, a, b, new, offset=new)
    for fitted in (f, abstain):  # applied to other rows, it needs to know which of them it offsets or abstains on
        with pytest.raises(ValueError, match="pass new="):
            fitted["fuse"](a, b)
    assert not f["c_at_edge"] and plain["c_at_edge"] is False


def test_abstaining_fusion_ranks_new_item_rows_by_the_other_run(tmp_path):
    """--fuse --abstain: on new-item rows a's score (noise there) is one constant picked on valid, so those
    rows rank by b alone (b's new-item AUC exactly) and the constant places them against the rest; it beats
    the plain fusion, which keeps a's noise on them. Runs whose scores.npz have no new_item flags are refused."""
    from sasrecllm_jax.compare import late_fusion
    from sasrecllm_jax.errors import ConfigError
    n = 4000

    def split(seed):
        r = np.random.default_rng(seed)
        new = r.random(n) < 0.5
        y = (r.random(n) < np.where(new, 0.8, 0.3)).astype(np.int8)  # new-item rows are mostly positives
        a = np.where(new, r.normal(size=n), y + r.normal(size=n))  # a knows only the old items
        b = 0.5 * y + r.normal(size=n)
        return new.astype(np.int8), y, a, b
    (nv, yv, av, bv), (nt, yt, at, bt) = split(1), split(2)
    runs = {}
    for name, v, t in (("a", av, at), ("b", bv, bt)):
        runs[name] = _fake_run(tmp_path / name, v, t, yv, yt)
        scores = dict(np.load(runs[name] / "scores.npz"))
        np.savez(runs[name] / "scores.npz", **scores, **{"valid_small.new_item": nv, "test.new_item": nt})
    plain, abstained = late_fusion(runs["a"], runs["b"]), late_fusion(runs["a"], runs["b"], abstain=True)
    new = nt.astype(bool)
    assert math.isclose(auc(yt[new], abstained["test_scores"][new]), auc(yt[new], bt[new]))
    assert abstained["abstain_c"] > 0 and "abstain_c" not in plain  # new-item rows placed above the rest
    # a residual hybrid started at llm_gate_init = gate_b and unknown_score_init = abstain_score ranks alike:
    # a's own score on known rows, abstain_score on new ones, plus gate_b x b
    residual = np.where(new, abstained["abstain_score"], at) + abstained["gate_b"] * bt
    (slope, shift), *_ = np.linalg.lstsq(np.stack([residual, np.ones(n)], 1), abstained["test_scores"], rcond=None)
    assert slope > 0 and np.allclose(slope * residual + shift, abstained["test_scores"], rtol=0, atol=1e-9)
    assert abstained["valid_auc"] > plain["valid_auc"] + 0.02
    assert abstained["test"]["all"]["AUC"]["auc_b"] > plain["test"]["all"]["AUC"]["auc_b"] + 0.02
    # --split-gate: b's weight on new-item rows apart; the residual with the two gates ranks as its test scores
    split = late_fusion(runs["a"], runs["b"], abstain=True, split_gate=True)
    assert split["valid_auc"] >= abstained["valid_auc"] and split["gate_b"] != split["gate_b_rows"]
    residual = np.where(new, split["abstain_score"], at) + np.where(new, split["gate_b_rows"], split["gate_b"]) * bt
    (slope, shift), *_ = np.linalg.lstsq(np.stack([residual, np.ones(n)], 1), split["test_scores"], rcond=None)
    assert slope > 0 and np.allclose(slope * residual + shift, split["test_scores"], rtol=0, atol=1e-9)
    # compare --fuse prints what each picked: the weight, the constant, the two gates
    from sasrecllm_jax.compare import fusion_lines
    for kw, first, second in (({}, "(1 - w) z(a) + w z(b), w = ", "(the same ranking as a + a x b"),
                              ({"abstain": True}, f"c = {abstained['abstain_c']:+.2f} picked", "(a abstains on new-item"),
                              ({"abstain": True, "split_gate": True}, f"{split['gate_b_rows']:.3g} on new-item rows", "")):
        lines = fusion_lines(runs["a"], runs["b"], **kw)
        assert lines[0].startswith("Late fusion of a and b: ") and first in lines[0], (kw, lines[0])
        assert lines[1].startswith(second) and ("split_gate" in kw) == ("llm_gate_unknown" in lines[0]), (kw, lines[:2])
    with pytest.raises(ConfigError, match="add --abstain"):
        late_fusion(runs["a"], runs["b"], split_gate=True)
    # --known-gate-zero: a alone ranks the known rows; without --split-gate it is refused
    held = late_fusion(runs["a"], runs["b"], abstain=True, split_gate=True, known_gate_zero=True)
    assert held["gate_b"] == 0.0 and held["gate_b_rows"] > 0
    assert math.isclose(auc(yt[~new], held["test_scores"][~new]), auc(yt[~new], at[~new]), abs_tol=1e-12)
    assert auc(yt[~new], split["test_scores"][~new]) != auc(yt[~new], at[~new])
    with pytest.raises(ConfigError, match="add --split-gate"):
        late_fusion(runs["a"], runs["b"], abstain=True, known_gate_zero=True)
    with pytest.raises(ConfigError, match="no new_item column"):
        late_fusion(_fake_run(tmp_path / "old_a", av, at, yv, yt), _fake_run(tmp_path / "old_b", bv, bt, yv, yt),
                    abstain=True)


def test_compare_rows_print_dashes_for_a_test_without_enough_labels():
    from sasrecllm_jax.compare import format_rows
    from sasrecllm_jax.metrics import paired_auc_test, paired_uauc_test
    rows = format_rows("run", {"warm": {"AUC": paired_auc_test([1, 0, 1, 0], [1, 2, 3, 4], [2, 1, 3, 5]),
                                        "UAUC": paired_uauc_test([7, 7], [1, 0], [1, 2], [2, 1])}})
    assert rows == ["| run | warm | AUC | 4 | 0.2500 | 0.5000 | +0.2500 | [-0.4430, +0.9430] | 0.480 |",
                    "| run | warm | UAUC | 1 | - | - | - | - | - |"]


def test_paired_auc_means_test_reduces_to_the_paired_test_and_matches_the_spread_of_its_difference():
    """Each side's scorer repeated is DeLong's paired test (one scorer a side, which is paired_auc_test and
    tested by hand above); and over simulated test sets the mean-over-seeds difference varies as much as its
    standard error says."""
    from sasrecllm_jax.metrics import paired_auc_means_test, paired_auc_test
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.4
    a, b = y + rng.normal(0, 1.5, 300), y + rng.normal(0, 1.2, 300)
    one = paired_auc_test(y, a, b)
    for got in (paired_auc_means_test(y, [a, a], [b, b, b]), paired_auc_means_test(y, [a, a, a], [b])):
        for key in ("auc_a", "auc_b", "diff", "se"):
            assert math.isclose(got[key], one[key], rel_tol=1e-9), key
    # two seeds a side: each scorer is the row's signal plus a seed's noise plus a noise of the row shared
    # by the method's seeds; the interval's width must match the difference's spread over test sets
    diffs, ses = [], []
    for _ in range(300):
        y = rng.random(400) < 0.4
        shared_a, shared_b = rng.normal(0, 1.0, 400), rng.normal(0, 1.0, 400)
        sa = [y + shared_a + rng.normal(0, 0.8, 400) for _ in range(2)]
        sb = [1.3 * y + shared_b + rng.normal(0, 0.8, 400) for _ in range(2)]
        r = paired_auc_means_test(y, sa, sb)
        diffs.append(r["diff"])
        ses.append(r["se"])
    ratio = float(np.std(diffs) / np.sqrt(np.mean(np.square(ses))))
    assert 0.85 < ratio < 1.15, ratio
    assert np.mean(diffs) > 0.04  # b separates the labels better
    # with one seed per side it would be the single pair's, wider than the mean's
    assert paired_auc_means_test(y, sa, sb)["se"] < paired_auc_test(y, sa[0], sb[0])["se"]
