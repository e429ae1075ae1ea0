"""Shared-prefix packing: every row's score in a pack is the score it gets alone, for the splits' rows and
for ranking's candidates (one user, many targets); and the packs do share (fewer sequences than rows).
Padding train batches to lengths chosen from the prompts (data.pad_lengths) changes no score either."""
import dataclasses

import jax
import numpy as np
import pandas as pd
import pytest

from helpers import ONE_SHAPE, smoke_config, synthetic_dataset
from sasrecllm_jax.assembly import Assembly
from sasrecllm_jax.data import packing
from sasrecllm_jax.data.pipeline import BatchIterator, Padding, length_buckets, make_batch, padded_length
from sasrecllm_jax.evaluate import Scorer, in_chunks, score_split


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    dataset = synthetic_dataset(tmp_path_factory.mktemp("data") / "synthetic")
    # padded to 128: the rows (40-88 tokens) leave room in a pack for a prefix and several targets
    cfg = smoke_config(dataset, "model.mapper.fusion=gate", ONE_SHAPE)
    comp = Assembly.build(cfg, needs_llm=True, key=jax.random.key(0))
    params = comp.init_params(jax.random.key(1))
    # LoRA's B and the mapper's output layer start at zero: move the encoder, the mapper and every adapter,
    # so the soft tokens and the adapters change the scores
    moved = lambda path: str(path).startswith(("['mapper']", "['sasrec']")) or "'b'" in str(path) or "'a'" in str(path)
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 0.05 * jax.random.normal(jax.random.key(len(str(path))), x.shape, x.dtype)
        if moved(path) else x, params)
    return cfg, comp, params


def both_ways(cfg, comp, params, data, prompt, batch_size, collab="on"):
    scorer = Scorer(comp.model(prompt, deterministic=True))
    alone = score_split(scorer, params, data, batch_size, cfg.data.pad_multiple, True, collab)
    packed = score_split(scorer, params, data, batch_size, cfg.data.pad_multiple, True, collab, share_prefix=True)
    cap = padded_length(data.lengths().max(), cfg.data.pad_multiple)
    packs = packing.pack_rows(data, cap)
    assert sorted(np.concatenate(packs.rows)) == list(range(len(data)))  # every row in exactly one pack
    assert packs.lengths.max() <= cap
    return alone, packed, packs


@pytest.mark.parametrize("prompt", ["hybrid", "text"])
def test_a_split_scores_the_same_packed(built, prompt):
    cfg, comp, params = built
    data = comp.split("test", prompt)
    alone, packed, packs = both_ways(cfg, comp, params, data, prompt, batch_size=8)  # a part-filled last batch
    assert len(packs.rows) < len(data), "no two rows shared a prefix: the test data lost its point"
    assert np.isfinite(alone).all() and alone.std() > 0
    np.testing.assert_allclose(packed, alone, rtol=1e-5, atol=1e-5)
    if prompt == "hybrid":  # the drop ablation packs too: the soft tokens and the ID score are zeroed
        dropped, packed_dropped, _ = both_ways(cfg, comp, params, data, prompt, batch_size=8, collab="drop")
        assert np.abs(dropped - alone).max() > 1e-3
        np.testing.assert_allclose(packed_dropped, dropped, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prompt", ["hybrid", "text"])
def test_a_packed_train_batch_has_the_unpacked_loss_and_gradients(built, prompt):
    """data.pack_train: a batch of packs (and a filler pack, weight 0) gives the loss and the gradients of
    the mapper and the adapters that the same rows give unpacked, up to float rounding."""
    from sasrecllm_jax.train import groups
    from sasrecllm_jax.train.step import weighted_bce
    from sasrecllm_jax.trees import merge
    cfg, comp, params = built
    data = comp.split("train", prompt)
    packs = packing.pack_rows(data, padded_length(data.lengths().max(), cfg.data.pad_multiple))
    shared = [k for k, rows in enumerate(packs.rows) if len(rows) > 1]
    assert len(shared) >= 3, "no rows shared a prefix: the test data lost its point"
    idx = np.asarray(shared[:3] + [next(k for k, rows in enumerate(packs.rows) if len(rows) == 1)])
    rows = np.concatenate([packs.rows[k] for k in idx])
    assert len(set(data.label[rows])) == 2
    slots = max(len(packs.rows[k]) for k in idx) + 1  # an empty slot in every pack
    packed = packing.make_pack_batch(data, packs, idx, len(idx) + 1, cfg.data.pad_multiple, max_slots=slots, labels=True)
    assert packed["weight"].sum() == len(rows) and not packed["weight"][-1].any()
    alone = make_batch(data, rows, len(rows) + 2, cfg.data.pad_multiple, True)  # two filler rows
    alone.pop("row")
    model = comp.model(prompt, deterministic=True)
    trainable, frozen = groups.split(params, ["mapper", "lora"] if prompt == "hybrid" else ["lora"])

    def loss(t, batch):
        total, count = weighted_bce(model.apply({"params": merge(t, frozen)}, batch), batch["label"], batch["weight"])
        return total / count

    (want, want_grads), (got, got_grads) = (jax.value_and_grad(loss)(trainable, b) for b in (alone, packed))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    flat_want, flat_got = jax.tree_util.tree_leaves(want_grads), jax.tree_util.tree_leaves(got_grads)
    assert max(float(np.abs(g).max()) for g in flat_want) > 1e-4  # the gradients are not all zero
    for w, g in zip(flat_want, flat_got):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


def test_pad_lengths_change_the_shapes_not_the_scores(built):
    """data.pad_lengths: a phase's train batches padded to a few lengths chosen from its prompts score every
    row as multiples of pad_multiple do, in at most that many shapes and fewer token slots."""
    cfg, comp, params = built
    data = comp.split("test", "hybrid")
    chosen = Padding.for_training(data, dataclasses.replace(cfg.data, pad_multiple=32, pad_lengths=2))
    assert chosen == Padding(32, length_buckets(data.lengths(), 2)) and len(chosen.lengths) == 2
    assert chosen.lengths[-1] == -(-data.lengths().max() // 8) * 8  # the longest prompt, rounded up to 8
    assert Padding.for_training(data, dataclasses.replace(cfg.data, pad_lengths=0)) == Padding(cfg.data.pad_multiple)
    scorer = Scorer(comp.model("hybrid", deterministic=True))
    it = BatchIterator(data.lengths(), 8, seed=0)
    slots, shapes = {32: 0, 0: 0}, set()
    for _ in range(it.batches_per_epoch):
        idx = next(it)
        scores = {}
        for name, pad in ((32, Padding(32)), (0, chosen)):
            batch = make_batch(data, idx, 8, pad, True)
            slots[name] += batch["tokens"].size
            if name == 0:
                shapes.add(batch["tokens"].shape[1])
            scores[name] = np.asarray(scorer.dispatch(params, {k: v for k, v in batch.items()
                                                               if k not in ("row", "weight", "label")}))
        np.testing.assert_allclose(scores[0], scores[32], rtol=1e-5, atol=1e-5)
    assert shapes == set(chosen.lengths) and slots[0] < slots[32]  # both lengths used, fewer slots


def test_ranking_candidates_score_the_same_packed(built):
    """One positive's candidates share the user and history: several of them share a sequence."""
    cfg, comp, params = built
    test = comp.dataset.splits["test"]
    heads = test[test.his.apply(len) > 0].head(2)
    items = np.arange(1, comp.dataset.num_items + 1)[:20]
    table = pd.DataFrame({"uid": np.repeat(heads.uid.to_numpy(), len(items)), "iid": np.tile(items, len(heads)),
                          "label": 0, "timestamp": 0, "not_cold": 1,
                          "his": [np.asarray(h, np.int64) for h in heads.his for _ in items]})
    data = comp.encoder.encode_rows("candidates", table, "hybrid")
    alone, packed, packs = both_ways(cfg, comp, params, data, "hybrid", batch_size=4)
    assert min(map(len, packs.rows)) >= 4 and len(packs.rows) <= len(data) // 4
    np.testing.assert_allclose(packed, alone, rtol=1e-5, atol=1e-5)


def test_pack_rows_by_hand():
    """Rows of one (user, history) share their longest common start, up to the target's placeholder; a
    group whose rows differ before the end of the user's placeholder goes row by row; a pack holds at
    most `cap` tokens."""
    from sasrecllm_jax.data.pipeline import SplitData
    from sasrecllm_jax.data.prompts import EncodedPrompts
    tok = lambda *ids: np.asarray(ids, np.int32)
    rows = [tok(5, 6, 0, 7, 8, 0, 9),      # user 1: placeholders (0) at 2 and 5
            tok(5, 6, 0, 7, 3, 0, 9),      # user 1, same history: common start 5, 6, 0, 7
            tok(5, 6, 0, 7, 4, 4, 0, 9),   # user 1 again
            tok(5, 0, 7, 1, 0, 9),         # user 2: the first of its group
            tok(5, 4, 0, 7, 2, 0, 9)]      # user 2: differs before its user placeholder ends
    uid = np.array([1, 1, 1, 2, 2], np.int32)
    prompts = EncodedPrompts(rows, user_pos=np.array([2, 2, 2, 1, 2]), item_pos=np.array([5, 5, 6, 4, 5]),
                             shortened=0, num_soft_tokens=1)
    data = SplitData("hand", uid, np.arange(1, 6, dtype=np.int32), np.zeros(5, np.float32), np.ones(5, np.int8),
                     np.zeros((5, 3), np.int32), [np.array([], np.int64)] * 5, prompts=prompts)
    packs = packing.pack_rows(data, cap=16)
    got = {tuple(r): (int(pre), int(n)) for r, pre, n in zip(packs.rows, packs.prefix, packs.lengths)}
    assert got == {(0, 1, 2): (4, 4 + 3 + 3 + 4), (3,): (4, 6), (4,): (5, 7)}, got
    packs = packing.pack_rows(data, cap=11)  # 4 + 3 + 3 fits, the third row's 4 more do not
    assert [tuple(r) for r in packs.rows][:2] == [(0, 1), (2,)] and list(packs.lengths[:2]) == [10, 8]


def test_a_small_request_gets_a_small_batch(built):
    """Three rows are scored in a batch of 4 (the next power of two), not of batch_size, with the scores
    they get among 64 rows."""
    cfg, comp, params = built
    test = comp.dataset.splits["test"]
    assert len(test) >= 64
    many, few = (comp.encoder.encode_rows(name, test.head(n), "hybrid") for name, n in (("many", 64), ("few", 3)))
    big, small = (Scorer(comp.model("hybrid", deterministic=True)) for _ in range(2))
    full = score_split(big, params, many, 64, cfg.data.pad_multiple, True)
    got = score_split(small, params, few, 64, cfg.data.pad_multiple, True)
    assert {dict(shape)["tokens"][0] for shape in big.compile.shapes} == {64}
    assert {dict(shape)["tokens"][0] for shape in small.compile.shapes} == {4}
    np.testing.assert_allclose(got, full[:3], rtol=1e-5, atol=1e-5)
    # packed: a batch of as many packs as the next power of two above their count
    packs = len(packing.pack_rows(few, padded_length(few.lengths().max(), cfg.data.pad_multiple)).rows)
    in_packs = Scorer(comp.model("hybrid", deterministic=True))
    got = score_split(in_packs, params, few, 64, cfg.data.pad_multiple, True, share_prefix=True)
    next_power_of_two = {1: 1, 2: 2, 3: 4}[packs]  # three rows make one, two or three packs
    assert {dict(shape)["tokens"][0] for shape in in_packs.compile.shapes} == {next_power_of_two}
    np.testing.assert_allclose(got, full[:3], rtol=1e-5, atol=1e-5)


def test_a_batch_scored_in_chunks_scores_as_a_whole(built):
    """The CPU scorer runs a batch 16 rows at a time (evaluate.in_chunks): the scores of the whole batch, for
    rows, for packs and for the drop ablation; a shuffle ablation (rows swap tokens across the batch) and a
    batch that 16 does not divide run whole."""
    cfg, comp, params = built
    test = comp.dataset.splits["test"]
    data = comp.encoder.encode_rows("chunks", test.head(64), "hybrid")
    whole, chunked = (Scorer(comp.model("hybrid", deterministic=True), chunk_rows=rows) for rows in (0, 16))
    pad = cfg.data.pad_multiple
    for kw in ({}, {"share_prefix": True}, {"collab": "drop"}, {"collab": "shuffle"}):
        want = score_split(whole, params, data, 64, pad, True, **kw)
        got = score_split(chunked, params, data, 64, pad, True, **kw)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    odd = comp.encoder.encode_rows("odd", test.head(24), "hybrid")  # a batch of 24: 16 does not divide it
    np.testing.assert_allclose(score_split(chunked, params, odd, 24, pad, True),
                               score_split(whole, params, odd, 24, pad, True), rtol=1e-5, atol=1e-5)
    # the chunks are what runs: apply sees 16 rows at a time, or the whole batch when it shuffles
    seen = []
    record = lambda params, batch: (seen.append(batch["tokens"].shape), batch["tokens"].sum(-1))[1]
    tokens = np.arange(64 * 3).reshape(64, 3)
    np.testing.assert_array_equal(jax.jit(in_chunks(record, 16))(None, {"tokens": tokens}), tokens.sum(-1))
    jax.jit(in_chunks(record, 16))(None, {"tokens": tokens, "collab_perm": np.arange(64)})
    assert seen == [(16, 3), (64, 3)]


@pytest.mark.parametrize("template", ["text.txt", "user_only.txt"])
def test_rows_of_unknown_items_read_their_own_template(tmp_path_factory, monkeypatch, template):
    """data.prompt_hybrid_unknown_item: rows whose item has no train row (here: odd items, for the prompts and
    the mapper's item_seen flags alike) render the other template. With the text template and no fusion their
    score is the text model's; rows of known items score as without the option; packing scores every row as
    alone."""
    from helpers import ROOT
    dataset = synthetic_dataset(tmp_path_factory.mktemp("data") / "synthetic")
    cfg = smoke_config(dataset, "model.mapper.new_items=unknown", ONE_SHAPE,
                       f"data.prompt_hybrid_unknown_item={ROOT / 'tests/prompts' / template}")
    comp = Assembly.build(cfg, needs_llm=True, key=jax.random.key(0))
    params = comp.init_params(jax.random.key(1))
    seen = np.arange(comp.dataset.num_items + 1) % 2 == 0
    monkeypatch.setattr(comp.encoder, "seen_items", lambda: np.flatnonzero(seen))
    params["mapper"]["counts"]["item_seen"] = seen.astype(np.float32)
    params["mapper"] = jax.tree_util.tree_map_with_path(
        lambda path, x: x if "counts" in str(path) else x + 0.05 * jax.random.normal(jax.random.key(7), x.shape, x.dtype),
        params["mapper"])
    hybrid, text = comp.split("test", "hybrid"), comp.split("test", "text")
    unknown = ~seen[hybrid.iid]
    assert 0 < unknown.sum() < len(hybrid)
    p = hybrid.prompts
    assert (p.item_pos[unknown] == -1).all() and (p.item_pos[~unknown] >= 0).all()
    assert ((p.user_pos[unknown] >= 0) == (template == "user_only.txt")).all() and (p.user_pos[~unknown] >= 0).all()
    alone, packed, packs = both_ways(cfg, comp, params, hybrid, "hybrid", batch_size=8)
    np.testing.assert_allclose(packed, alone, rtol=1e-5, atol=1e-5)
    assert len(packs.rows) < len(hybrid)
    as_text = score_split(Scorer(comp.model("text", deterministic=True)), params, text, 8, cfg.data.pad_multiple, True)
    if template == "text.txt":
        assert all(np.array_equal(p.tokens[r], text.prompts.tokens[r]) for r in np.flatnonzero(unknown))
        np.testing.assert_allclose(alone[unknown], as_text[unknown], rtol=1e-5, atol=1e-5)
    else:
        assert np.abs(alone[unknown] - as_text[unknown]).max() > 1e-3  # the user's soft token is read
    # rows of known items score as without the option
    plain_cfg = smoke_config(dataset, "model.mapper.new_items=unknown", ONE_SHAPE)
    plain = Assembly.build(plain_cfg, needs_llm=True, key=jax.random.key(0))
    as_before = score_split(Scorer(plain.model("hybrid", deterministic=True)), params, plain.split("test", "hybrid"),
                            8, cfg.data.pad_multiple, True)
    np.testing.assert_allclose(alone[~unknown], as_before[~unknown], rtol=1e-5, atol=1e-5)
    assert np.abs(alone[unknown] - as_before[unknown]).max() > 1e-3


@pytest.mark.parametrize("inject", ["last", "cross"])
def test_vectors_added_at_the_last_position_start_as_the_text_model(tmp_path_factory, inject):
    """model.mapper.inject: last. Hybrid rows read the text template; the mapped vectors are added to the last
    position's input embedding, so a zero-output mapper scores every row as the text model does, exactly;
    a trained one moves every score, packs score as alone, and the drop ablation is the text model again.
    inject: cross, the same with a mapper whose output is not zero: the last position reads the vectors
    through a cross-attention in every layer whose gates start at 0; with the gates moved, a packed train
    batch (an empty slot in each pack) has the unpacked loss and gradients, the cross-attention's weights
    included."""
    dataset = synthetic_dataset(tmp_path_factory.mktemp("data") / "synthetic")
    cfg = smoke_config(dataset, f"model.mapper.inject={inject}", ONE_SHAPE,
                       *(["model.mapper.out_init=zeros"] if inject == "last" else ["model.mapper.cross_rank=8"]))
    comp = Assembly.build(cfg, needs_llm=True, key=jax.random.key(0))
    params = comp.init_params(jax.random.key(1))
    params["llm"] = jax.tree_util.tree_map_with_path(  # adapters that change the text model's scores
        lambda path, x: x + 0.05 * jax.random.normal(jax.random.key(len(str(path))), x.shape, x.dtype)
        if "'b'" in str(path) else x, params["llm"])
    hybrid, text = comp.split("test", "hybrid"), comp.split("test", "text")
    assert all(np.array_equal(a, b) for a, b in zip(hybrid.prompts.tokens, text.prompts.tokens))
    assert (hybrid.prompts.item_pos == hybrid.prompts.lengths - 1).all() and (hybrid.prompts.user_pos == -1).all()
    as_text = score_split(Scorer(comp.model("text", deterministic=True)), params, text, 8, cfg.data.pad_multiple, True)
    start, _, _ = both_ways(cfg, comp, params, hybrid, "hybrid", batch_size=8)
    np.testing.assert_array_equal(start, as_text)
    params["mapper"] = jax.tree_util.tree_map(
        lambda x: x + 0.05 * jax.random.normal(jax.random.key(3), x.shape, x.dtype), params["mapper"])
    alone, packed, packs = both_ways(cfg, comp, params, hybrid, "hybrid", batch_size=8)
    if inject == "cross":  # the moved mapper with its gates at 0 adds nothing: the text model, exactly
        shut = {**params, "mapper": {**params["mapper"], "cross": {**params["mapper"]["cross"],
                                                                    "gate": np.zeros_like(params["mapper"]["cross"]["gate"])}}}
        np.testing.assert_array_equal(both_ways(cfg, comp, shut, hybrid, "hybrid", batch_size=8)[0], as_text)
    assert len(packs.rows) < len(hybrid)
    np.testing.assert_allclose(packed, alone, rtol=1e-5, atol=1e-5)
    assert np.abs(alone - as_text).min() > 1e-6
    dropped, packed_dropped, _ = both_ways(cfg, comp, params, hybrid, "hybrid", batch_size=8, collab="drop")
    np.testing.assert_allclose(dropped, as_text, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(packed_dropped, as_text, rtol=1e-5, atol=1e-5)
    if inject == "cross":
        from sasrecllm_jax.train import groups
        from sasrecllm_jax.train.step import weighted_bce
        from sasrecllm_jax.trees import merge
        assert params["mapper"]["cross"]["gate"].shape == (comp.backbone.llm_cfg.num_layers,)
        data = comp.split("train", "hybrid")
        packs = packing.pack_rows(data, padded_length(data.lengths().max(), cfg.data.pad_multiple))
        idx = np.asarray([k for k, rows in enumerate(packs.rows) if len(rows) > 1][:3])
        rows = np.concatenate([packs.rows[k] for k in idx])
        packed = packing.make_pack_batch(data, packs, idx, len(idx), cfg.data.pad_multiple,
                                         max_slots=max(len(packs.rows[k]) for k in idx) + 1, labels=True)
        alone = make_batch(data, rows, len(rows), cfg.data.pad_multiple, True)
        alone.pop("row")
        model = comp.model("hybrid", deterministic=True)
        trainable, frozen = groups.split(params, ["mapper"])

        def loss(t, batch):
            total, count = weighted_bce(model.apply({"params": merge(t, frozen)}, batch), batch["label"], batch["weight"])
            return total / count
        (want, want_grads), (got, got_grads) = (jax.value_and_grad(loss)(trainable, b) for b in (alone, packed))
        np.testing.assert_allclose(got, want, rtol=1e-5)
        assert all(float(np.abs(g).max()) > 1e-6 for g in jax.tree_util.tree_leaves(want_grads["mapper"]["cross"]))
        for w, g in zip(jax.tree_util.tree_leaves(want_grads), jax.tree_util.tree_leaves(got_grads)):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)
