"""SASRec vs NumPy, LoRA identities, the partition, and the hybrid's splice / padding / gradients."""
import dataclasses

import chex
import jax
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from sasrecllm_jax.config import DEBUG_TINY, TINYLLAMA_1_1B, LoraConfig, MapperConfig, ModelConfig, SASRecConfig
from sasrecllm_jax.models.hybrid import Hybrid, splice
from sasrecllm_jax.models.llama import LlamaForCausalLM
from sasrecllm_jax.models.sasrec import SASRec
from sasrecllm_jax.errors import PartitionError
from sasrecllm_jax.train import groups as partition


# ----------------------------------------------------------------------------- SASRec
def _ln(x, p, eps=1e-8):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _dense(x, p):
    return x @ p["kernel"] + p["bias"]


def sasrec_numpy(p, his, cfg):
    """SASRec forward written from the reference SASRec code's equations, independent of the Flax module."""
    p = jax.tree_util.tree_map(np.asarray, p)
    B, L = his.shape
    D, H = cfg.hidden, cfg.num_heads
    keep = (his != 0)[..., None]
    x = p["item_emb"]["embedding"][his] * keep * np.sqrt(D) + p["pos_emb"]["embedding"][:L][None]
    x = x * keep
    for i in range(cfg.num_blocks):
        a = p[f"attention_layers_{i}"]
        q = _ln(x, p[f"attention_layernorms_{i}"])
        heads = lambda t: t.reshape(B, L, H, D // H).transpose(0, 2, 1, 3)
        Q, K, V = heads(_dense(q, a["q"])), heads(_dense(x, a["k"])), heads(_dense(x, a["v"]))
        s = Q @ K.transpose(0, 1, 3, 2) / np.sqrt(D // H)
        s = np.where(np.tril(np.ones((L, L), bool)), s, -np.inf)
        w = np.exp(s - s.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        att = _dense((w @ V).transpose(0, 2, 1, 3).reshape(B, L, D), a["out"])
        x = q + att
        x = _ln(x, p[f"forward_layernorms_{i}"])
        x = x + _dense(np.maximum(_dense(x, p[f"forward_fc1_{i}"]), 0), p[f"forward_fc2_{i}"])
        x = x * keep
    return _ln(x, p["last_layernorm"])[:, -1]


@pytest.mark.parametrize("heads", [1, 4])
def test_sasrec_matches_numpy(heads):
    cfg = SASRecConfig(hidden=16, num_blocks=2, num_heads=heads, max_len=6)
    model = SASRec(cfg, num_items=30)
    his = np.array([[0, 0, 3, 7, 1, 2], [0, 0, 0, 0, 0, 9], [4, 5, 6, 7, 8, 9]])
    params = model.init(jax.random.key(0), jnp.asarray(his), None, method=SASRec.user_vector)["params"]
    params = jax.tree_util.tree_map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(1), x.shape), params)
    ours = model.apply({"params": params}, jnp.asarray(his), None, method=SASRec.user_vector)
    np.testing.assert_allclose(np.asarray(ours), sasrec_numpy(params, his, cfg), atol=2e-5)
    # dropout only when not deterministic; a deterministic SASRec ignores the dropout key
    train = SASRec(cfg, 30, deterministic=False)
    a = train.apply({"params": params}, jnp.asarray(his), None, method=SASRec.user_vector, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(np.asarray(a), np.asarray(ours))


# ----------------------------------------------------------------------------- LoRA
def _tiny_lm(lora=LoraConfig(rank=4, alpha=8, dropout=0.0)):
    model = LlamaForCausalLM(DEBUG_TINY, lora)
    ids = jax.random.randint(jax.random.key(3), (2, 10), 0, DEBUG_TINY.vocab_size)
    params = model.init(jax.random.key(0), ids)["params"]
    return model, params, ids


def test_lora_starts_at_base_and_merges():
    model, params, ids = _tiny_lm()
    base_params, _ = partition.split({"llm": params}, ["frozen"])
    base = LlamaForCausalLM(DEBUG_TINY).apply({"params": base_params["llm"]}, ids)
    np.testing.assert_array_equal(np.asarray(model.apply({"params": params}, ids)), np.asarray(base))
    # give the adapters values, then merged (base model) == unmerged (LoRA model)
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: x + 0.05 * jax.random.normal(jax.random.key(len(p)), x.shape) if "lora" in str(p) else x, params)
    lora_out = model.apply({"params": params}, ids)
    merged = merge_lora(params, model.lora.scale)
    assert "lora" not in str(jax.tree_util.tree_structure(merged))
    merged_out = LlamaForCausalLM(DEBUG_TINY).apply({"params": merged}, ids)
    np.testing.assert_allclose(np.asarray(merged_out), np.asarray(lora_out), atol=1e-5)
    assert not np.allclose(np.asarray(merged_out), np.asarray(base), atol=1e-3)


def merge_lora(tree, scale):
    """Every adapter folded into its kernel (kernel + a @ b * scale, layer-stacked): the base model's shapes."""
    if not isinstance(tree, dict):
        return tree
    if "lora" in tree:
        return {"kernel": tree["kernel"] + jnp.matmul(tree["lora"]["a"], tree["lora"]["b"]) * scale}
    return {k: merge_lora(v, scale) for k, v in tree.items()}


def test_lora_targets_by_name():
    model, params, _ = _tiny_lm(LoraConfig(rank=2, targets=("k_proj", "down_proj")))
    layers = params["model"]["layers"]
    assert "lora" in layers["self_attn"]["k_proj"] and "lora" in layers["mlp"]["down_proj"]
    assert "lora" not in layers["self_attn"]["q_proj"] and "lora" not in layers["self_attn"]["v_proj"]


# ----------------------------------------------------------------------------- partition
def test_partition_labels_every_leaf_and_refuses_unclaimed():
    params = {"llm": {"model": {"x": {"kernel": 1, "lora": {"a": 2, "b": 3}}}}, "mapper": {"w": 4}, "sasrec": {"e": 5}}
    lab = partition.labels(params)
    assert lab == {"llm": {"model": {"x": {"kernel": "frozen", "lora": {"a": "lora", "b": "lora"}}}},
                   "mapper": {"w": "mapper"}, "sasrec": {"e": "sasrec"}}
    train, rest = partition.split(params, ["lora", "mapper"])
    assert train == {"llm": {"model": {"x": {"lora": {"a": 2, "b": 3}}}}, "mapper": {"w": 4}}
    assert partition.merge(train, rest) == params
    with pytest.raises(PartitionError, match="stray/w is claimed by no rule"):
        partition.labels({"stray": {"w": 1}})
    with pytest.raises(PartitionError, match="leaf w is in both trees"):
        partition.merge({"m": {"w": 1}}, {"m": {"w": 2}})


def _hybrid(llm=DEBUG_TINY, k=1, **kw):
    cfg = ModelConfig(mapper=MapperConfig(hidden=32 if llm is DEBUG_TINY else 320, num_tokens=k),
                      sasrec=SASRecConfig(max_len=5), **kw)
    return Hybrid(cfg, llm, num_users=9, num_items=20, answer_ids=(5, 6), lora=LoraConfig(dropout=0.0))


def _batch(T=12, user_pos=(2, 3), item_pos=(6, 8), pad_right=0):
    B = len(user_pos)
    tokens = jax.random.randint(jax.random.key(7), (B, T), 10, DEBUG_TINY.vocab_size)
    return {"tokens": jnp.pad(tokens, ((0, 0), (0, pad_right))),
            "mask": jnp.pad(jnp.ones((B, T), jnp.int32), ((0, 0), (0, pad_right))),
            "user_pos": jnp.array(user_pos), "item_pos": jnp.array(item_pos),
            "his": jnp.array([[0, 0, 1, 2, 3], [0, 4, 5, 6, 7]][:B]), "uid": jnp.arange(1, B + 1),
            "iid": jnp.array([11, 12][:B])}


def test_trainable_count_tinyllama():
    model = _hybrid(TINYLLAMA_1_1B)
    abstract = jax.eval_shape(model.init, jax.random.key(0), _batch())["params"]
    assert partition.count(abstract, ["frozen"]) == 1_100_048_384
    assert partition.count(abstract, ["lora"]) == 1_126_400
    assert partition.count(abstract, ["mapper"]) == 678_208
    assert partition.count(abstract, ["lora", "mapper"]) == 1_804_608


@pytest.mark.parametrize("k", [1, 2])
def test_placeholders_land_in_place(k):
    model = _hybrid(k=k)
    batch = _batch(user_pos=(2, 3), item_pos=(6, 8))
    params = model.init(jax.random.key(0), batch)["params"]
    user, item, *_ = model.apply({"params": params}, batch, method=Hybrid.collaborative_inputs)
    assert user.shape == (2, k, DEBUG_TINY.hidden_size)
    emb = model.apply({"params": params}, batch["tokens"], method=lambda m, t: m.llm.embed(t))
    spliced = splice(splice(emb, user, batch["user_pos"]), item, batch["item_pos"])
    for b, (u, i) in enumerate(zip((2, 3), (6, 8))):
        np.testing.assert_array_equal(spliced[b, u:u + k], user[b])
        np.testing.assert_array_equal(spliced[b, i:i + k], item[b])
        untouched = [t for t in range(12) if not (u <= t < u + k or i <= t < i + k)]
        np.testing.assert_array_equal(spliced[b, untouched], emb[b, untouched])
    # the model's score is the LLM run on exactly these embeddings
    logits = model.apply({"params": params}, spliced, batch["mask"], method=lambda m, e, mk: m.llm(
        inputs_embeds=e, attention_mask=mk, logits_at=jnp.array([11, 11]), vocab_ids=jnp.array([5, 6])))
    np.testing.assert_allclose(model.apply({"params": params}, batch), logits[:, 0] - logits[:, 1], atol=1e-6)


def test_gate_adds_the_encoder_score():
    """fusion: gate = the plain hybrid's score + g x SASRec's own <user, item>; g is a mapper leaf; the
    ablation masks reach the ID score too."""
    from sasrecllm_jax.models.hybrid import EncoderScorer
    plain = _hybrid()
    gated = Hybrid(dataclasses.replace(plain.cfg, mapper=dataclasses.replace(plain.cfg.mapper, fusion="gate")),
                   DEBUG_TINY, 9, 20, (5, 6), LoraConfig(dropout=0.0))
    batch = _batch()
    params = gated.init(jax.random.key(0), batch)["params"]
    assert params["mapper"]["id_gate"] == 1.0 and partition.labels(params)["mapper"]["id_gate"] == "mapper"
    params["mapper"]["id_gate"] = jnp.float32(2.5)
    without = {**params, "mapper": {k: v for k, v in params["mapper"].items() if k != "id_gate"}}
    llm_score = plain.apply({"params": without}, batch)
    id_score = EncoderScorer(plain.cfg, 9, 20).apply({"params": {"sasrec": params["sasrec"]}}, batch)
    assert np.abs(id_score).min() > 1e-3
    np.testing.assert_allclose(gated.apply({"params": params}, batch), llm_score + 2.5 * id_score, rtol=1e-5, atol=1e-6)
    dropped = {**batch, "collab_scale": jnp.zeros(2)}
    np.testing.assert_allclose(gated.apply({"params": params}, dropped), plain.apply({"params": without}, dropped),
                               rtol=1e-6, atol=1e-6)
    swapped = {**batch, "collab_perm": jnp.array([1, 0])}
    np.testing.assert_allclose(gated.apply({"params": params}, swapped) - plain.apply({"params": without}, swapped),
                               2.5 * id_score[::-1], rtol=1e-4, atol=1e-5)


def test_dropped_collaborative_inputs_are_zero_whatever_they_held():
    """Dropping the collaborative inputs (collab_scale 0) leaves the text prompt's score even when the encoder
    gives a non-finite vector for the row's item: the tokens and the ID score are set to zero, not multiplied
    by it (0 x NaN is NaN)."""
    plain = _hybrid()
    gated = Hybrid(dataclasses.replace(plain.cfg, mapper=dataclasses.replace(plain.cfg.mapper, fusion="gate")),
                   DEBUG_TINY, 9, 20, (5, 6), LoraConfig(dropout=0.0))
    batch = _batch()
    params = gated.init(jax.random.key(0), batch)["params"]
    emb = params["sasrec"]["item_emb"]["embedding"]
    broken = {**params, "sasrec": {**params["sasrec"], "item_emb": {"embedding": emb.at[batch["iid"][0]].set(jnp.nan)}}}
    kept = gated.apply({"params": broken}, batch)
    assert np.isnan(kept[0]) and np.isfinite(kept[1])  # the fault reaches the row that shows the item
    dropped = {**batch, "collab_scale": jnp.array([0.0, 1.0])}
    out = gated.apply({"params": broken}, dropped)
    text_only = gated.apply({"params": params}, {**batch, "collab_scale": jnp.zeros(2)})
    np.testing.assert_allclose(out[0], text_only[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out[1], kept[1], rtol=1e-6, atol=1e-6)


def test_two_llm_gates_pick_by_the_item_shown_and_a_dropped_row_gets_the_unknown_gate():
    """llm_gates: known_unknown: score = ID score + llm_gate (item shown by its own vector) or llm_gate_unknown
    (item shown as unknown) x the LLM's log-odds; a row whose collaborative inputs are dropped shows no item
    of its own, so it gets llm_gate_unknown whatever the item (its ID score is zero)."""
    plain = _hybrid()
    cfg = dataclasses.replace(plain.cfg, mapper=dataclasses.replace(
        plain.cfg.mapper, new_items="unknown", fusion="residual", llm_gates="known_unknown", out_init="zeros"))
    model = Hybrid(cfg, DEBUG_TINY, 9, 20, (5, 6), LoraConfig(dropout=0.0))
    llm_only = Hybrid(dataclasses.replace(cfg, mapper=dataclasses.replace(cfg.mapper, fusion="none")),
                      DEBUG_TINY, 9, 20, (5, 6), LoraConfig(dropout=0.0))
    batch = _batch()  # iids 11, 12
    params = model.init(jax.random.key(0), batch)["params"]
    params["mapper"]["counts"]["item_seen"] = jnp.zeros(21).at[11].set(1.0)  # item 11 seen, item 12 not
    params["mapper"]["llm_gate"], params["mapper"]["llm_gate_unknown"] = jnp.float32(0.5), jnp.float32(2.0)
    llm = llm_only.apply({"params": params}, batch)  # zero soft tokens: the same LLM term whatever the ID side
    id_score, known = model.apply({"params": params}, batch, method=Hybrid.id_term)
    np.testing.assert_array_equal(known, [True, False])
    np.testing.assert_allclose(model.apply({"params": params}, batch), id_score + np.array([0.5, 2.0]) * llm, rtol=1e-5, atol=1e-5)
    dropped = {**batch, "collab_scale": jnp.zeros(2)}
    np.testing.assert_allclose(model.apply({"params": params}, dropped), 2.0 * llm_only.apply({"params": params}, dropped),
                               rtol=1e-5, atol=1e-5)


def test_the_llm_term_on_unknown_items_only_leaves_known_items_their_id_score():
    """llm_gates: unknown_only: no llm_gate, llm_gate_unknown starting at llm_gate_init; a row whose item is
    known scores its ID score exactly (even where the LLM's score is not finite) and passes the LLM side no
    gradient, an unknown one scores ID score + llm_gate_unknown x the LLM term."""
    plain = _hybrid()
    cfg = dataclasses.replace(plain.cfg, mapper=dataclasses.replace(
        plain.cfg.mapper, new_items="unknown", fusion="residual", llm_gates="unknown_only", llm_gate_init=0.7))
    model = Hybrid(cfg, DEBUG_TINY, 9, 20, (5, 6), LoraConfig(dropout=0.0))
    batch = _batch()  # iids 11, 12
    params = model.init(jax.random.key(0), batch)["params"]
    assert "llm_gate" not in params["mapper"] and float(params["mapper"]["llm_gate_unknown"]) == pytest.approx(0.7)
    params["mapper"]["counts"]["item_seen"] = jnp.zeros(21).at[11].set(1.0)  # item 11 seen, item 12 not
    id_score, known = model.apply({"params": params}, batch, method=Hybrid.id_term)
    np.testing.assert_array_equal(known, [True, False])
    llm_only = Hybrid(dataclasses.replace(cfg, mapper=dataclasses.replace(cfg.mapper, fusion="none")),
                      DEBUG_TINY, 9, 20, (5, 6), LoraConfig(dropout=0.0))
    llm = llm_only.apply({"params": params}, batch)
    scores = model.apply({"params": params}, batch)
    assert scores[0] == id_score[0]
    np.testing.assert_allclose(scores[1], id_score[1] + 0.7 * llm[1], rtol=1e-5, atol=1e-5)
    # the known row passes no gradient to the LLM side: the mapper's layers learn from the unknown row alone
    grad = lambda rows: jax.grad(lambda p: model.apply({"params": p}, batch)[rows].sum())(params)["mapper"]
    assert float(jnp.abs(grad(0)["fc2"]["kernel"]).max()) == 0.0 and float(grad(0)["llm_gate_unknown"]) == 0.0
    assert float(jnp.abs(grad(1)["fc2"]["kernel"]).max()) > 0.0 and float(grad(1)["llm_gate_unknown"]) != 0.0
    fuse = lambda l: model.apply({"params": params}, l, id_score, known, method=lambda m, *a: m.mapper.fuse(*a))
    assert float(fuse(jnp.array([jnp.inf, 1.0]))[0]) == float(id_score[0])


def test_unknown_item_vector_replaces_items_without_train_rows():
    """new_items: unknown: an item whose counts/item_seen flag is 0 enters the mapper (and the ID score) as the
    learned unknown_item vector, a seen item as its own embedding; item_dropout shows the unknown vector for a
    share of seen items in training only, and the unknown vector's gradient comes from those rows alone."""
    plain = _hybrid()
    cfg = dataclasses.replace(plain.cfg, mapper=dataclasses.replace(plain.cfg.mapper, new_items="unknown",
                                                                    item_dropout=0.2))
    model = Hybrid(cfg, DEBUG_TINY, 9, 20, (5, 6), LoraConfig(dropout=0.0))
    batch = _batch()  # iids 11, 12
    params = model.init(jax.random.key(0), batch)["params"]
    labels = partition.labels(params)
    assert labels["mapper"]["unknown_item"] == "mapper" and labels["mapper"]["counts"]["item_seen"] == "counts"
    assert params["mapper"]["counts"]["item_seen"].shape == (21,) and not np.any(params["mapper"]["unknown_item"])
    unknown = jax.random.normal(jax.random.key(3), (cfg.sasrec.hidden,))
    params["mapper"]["unknown_item"] = unknown
    params["mapper"]["counts"]["item_seen"] = jnp.zeros(21).at[11].set(1.0)  # item 11 seen, item 12 not
    inputs = lambda p, b, **kw: model.apply({"params": p}, b, method=lambda m, x: m.collaborative_inputs(x), **kw)
    user, item, id_score, _ = inputs(params, batch)
    emb = params["sasrec"]["item_emb"]["embedding"]
    mapped = lambda v: model.apply({"params": params}, v, method=lambda m, x: m.mapper(x))
    np.testing.assert_allclose(item[0], mapped(emb[11][None])[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(item[1], mapped(unknown[None])[0], rtol=1e-5, atol=1e-6)
    u = model.apply({"params": params}, batch["his"], batch["uid"], method=lambda m, h, i: m.encoder.user_vector(h, i))
    np.testing.assert_allclose(id_score, [u[0] @ emb[11], u[1] @ unknown], rtol=1e-5, atol=1e-6)
    # training: each seen row shows the unknown vector with probability item_dropout; scoring never does
    many = {"his": jnp.tile(batch["his"][:1], (256, 1)), "uid": jnp.ones(256, jnp.int32),
            "iid": jnp.full(256, 11, jnp.int32)}
    train_model = Hybrid(cfg, DEBUG_TINY, 9, 20, (5, 6), LoraConfig(dropout=0.0), deterministic=False)
    _, item_t, *_ = train_model.apply({"params": params}, many, method=lambda m, x: m.collaborative_inputs(x),
                                     rngs={"dropout": jax.random.key(1)})
    shown_unknown = np.all(np.isclose(item_t, mapped(unknown[None])[0], rtol=1e-5, atol=1e-6), axis=(1, 2))
    assert 25 < shown_unknown.sum() < 80  # Binomial(256, 0.2): 51.2, sd 6.4 (0.8, the keep rate: 205)
    _, item_e, *_ = inputs(params, many)
    assert not np.any(np.all(np.isclose(item_e, mapped(unknown[None])[0], rtol=1e-5, atol=1e-6), axis=(1, 2)))
    grad = jax.grad(lambda p: inputs(p, {**batch, "iid": jnp.array([11, 11])})[1].sum())(params)
    assert not np.any(grad["mapper"]["unknown_item"])  # no unseen row, no dropout: no gradient


def test_learned_unknown_id_score_stands_in_for_the_encoder_on_unknown_items():
    """unknown_id_score: learned: a row whose item is shown as unknown (no train row, or item_dropout in
    training) gets the mapper's unknown_score as its ID score instead of <user, unknown vector>; rows with a
    known item keep the encoder's score, and the number learns from the unknown rows alone."""
    plain = _hybrid()
    cfg = dataclasses.replace(plain.cfg, mapper=dataclasses.replace(
        plain.cfg.mapper, new_items="unknown", item_dropout=0.2, fusion="residual", unknown_id_score="learned"))
    model = Hybrid(cfg, DEBUG_TINY, 9, 20, (5, 6), LoraConfig(dropout=0.0))
    batch = _batch()  # iids 11, 12
    params = model.init(jax.random.key(0), batch)["params"]
    assert params["mapper"]["unknown_score"] == 0.0 and partition.labels(params)["mapper"]["unknown_score"] == "mapper"
    # unknown_score_init: the number starts there (an abstaining late fusion's score), nothing else moves
    started = Hybrid(dataclasses.replace(cfg, mapper=dataclasses.replace(cfg.mapper, unknown_score_init=2.5)),
                     DEBUG_TINY, 9, 20, (5, 6), LoraConfig(dropout=0.0))
    init = started.init(jax.random.key(0), batch)["params"]
    assert init["mapper"]["unknown_score"] == 2.5
    chex.assert_trees_all_equal({**init, "mapper": {**init["mapper"], "unknown_score": 0.0}}, params)
    params["mapper"]["unknown_item"] = jax.random.normal(jax.random.key(3), (cfg.sasrec.hidden,))
    params["mapper"]["unknown_score"] = jnp.float32(1.7)
    params["mapper"]["counts"]["item_seen"] = jnp.zeros(21).at[11].set(1.0)  # item 11 seen, item 12 not
    inputs = lambda p, b, m=model, **kw: m.apply({"params": p}, b, method=lambda m, x: m.collaborative_inputs(x), **kw)
    _, _, id_score, _ = inputs(params, batch)
    u = model.apply({"params": params}, batch["his"], batch["uid"], method=lambda m, h, i: m.encoder.user_vector(h, i))
    emb = params["sasrec"]["item_emb"]["embedding"]
    np.testing.assert_allclose(id_score, [u[0] @ emb[11], 1.7], rtol=1e-5, atol=1e-6)
    # the fused score moves with unknown_score on the unknown row only
    moved = {**params, "mapper": {**params["mapper"], "unknown_score": jnp.float32(-0.3)}}
    np.testing.assert_allclose(model.apply({"params": moved}, batch) - model.apply({"params": params}, batch),
                               [0.0, -2.0], atol=1e-5)
    # training: the rows item_dropout shows as unknown are exactly the rows scored with unknown_score
    many = {"his": jnp.tile(batch["his"][:1], (256, 1)), "uid": jnp.ones(256, jnp.int32),
            "iid": jnp.full(256, 11, jnp.int32)}
    train_model = Hybrid(cfg, DEBUG_TINY, 9, 20, (5, 6), LoraConfig(dropout=0.0), deterministic=False)
    _, item_t, score_t, _ = inputs(params, many, train_model, rngs={"dropout": jax.random.key(1)})
    mapped = lambda v: model.apply({"params": params}, v, method=lambda m, x: m.mapper(x))
    unknown_token = mapped(params["mapper"]["unknown_item"][None])[0]
    shown_unknown = np.all(np.isclose(item_t, unknown_token, rtol=1e-5, atol=1e-6), axis=(1, 2))
    assert 25 < shown_unknown.sum() < 80  # Binomial(256, 0.2)
    assert np.all(score_t[shown_unknown] == np.float32(1.7)) and not np.any(score_t[~shown_unknown] == np.float32(1.7))
    grad = lambda iid: jax.grad(lambda p: inputs(p, {**batch, "iid": jnp.array(iid)})[2].sum())(params)
    assert grad([11, 11])["mapper"]["unknown_score"] == 0.0  # every item known: no gradient
    assert grad([11, 12])["mapper"]["unknown_score"] == 1.0


def test_count_logits_by_hand():
    """Smoothed log-odds of each user's and item's positive rate on train; absent ones get the global rate."""
    import pandas as pd

    from sasrecllm_jax.models.pop import count_logits
    # g = 3/6 = 0.5; prior 2. user 1: 2 of 2 liked -> (2 + 1) / (2 + 2) = 0.75; user 2: 1 of 4 -> 2 / 6
    train = pd.DataFrame({"uid": [1, 1, 2, 2, 2, 2], "iid": [1, 2, 1, 2, 2, 3], "label": [1, 1, 1, 0, 0, 0]})
    user, item = count_logits(train, num_users=3, num_items=4, prior=2.0)
    logit = lambda p: np.log(p / (1 - p))
    np.testing.assert_allclose(user, [0.0, logit(0.75), logit(2 / 6), 0.0], rtol=1e-6)  # logit(g) = 0
    # item 1: 2 of 2 -> 0.75; item 2: 1 of 3 -> 2 / 5; item 3: 0 of 1 -> 1 / 3; items 0 and 4 unseen -> g
    np.testing.assert_allclose(item, [0.0, logit(0.75), logit(0.4), logit(1 / 3), 0.0], rtol=1e-6, atol=1e-7)
    shifted = train.assign(label=[1, 1, 1, 1, 0, 0])  # g = 2/3: the user term is relative to logit(g)
    user, item = count_logits(shifted, 3, 4, 2.0)
    assert user[0] == user[3] == 0.0 and np.isclose(item[4], logit(2 / 3))
    with pytest.raises(ValueError, match="positive rate is 1.0"):
        count_logits(train.assign(label=1), 3, 4, 2.0)


def test_sasrec_biases_add_to_the_score_and_reach_the_gate():
    """bias: learned adds user_bias[uid] + item_bias[iid] to <user, item> (zero at init), and the gated hybrid's
    ID term is that whole score; bias: none has no bias leaves (the reference SASRec)."""
    from sasrecllm_jax.models.hybrid import EncoderScorer
    batch = _batch()
    plain = _hybrid()
    biased_cfg = dataclasses.replace(plain.cfg, sasrec=dataclasses.replace(plain.cfg.sasrec, bias="learned"),
                                     mapper=dataclasses.replace(plain.cfg.mapper, fusion="gate"))
    assert "user_bias" not in plain.init(jax.random.key(0), batch)["params"]["sasrec"]
    enc_plain, enc = EncoderScorer(plain.cfg, 9, 20), EncoderScorer(biased_cfg, 9, 20)
    p = enc.init(jax.random.key(0), batch)["params"]
    assert p["sasrec"]["user_bias"]["embedding"].shape == (10, 1)
    assert p["sasrec"]["item_bias"]["embedding"].shape == (21, 1)
    without = {"sasrec": {k: v for k, v in p["sasrec"].items() if not k.endswith("_bias")}}
    np.testing.assert_array_equal(enc.apply({"params": p}, batch), enc_plain.apply({"params": without}, batch))
    p["sasrec"]["user_bias"]["embedding"] = p["sasrec"]["user_bias"]["embedding"].at[2, 0].set(0.5)  # batch uids 1, 2
    p["sasrec"]["item_bias"]["embedding"] = p["sasrec"]["item_bias"]["embedding"].at[11, 0].set(-2.0)  # iids 11, 12
    np.testing.assert_allclose(enc.apply({"params": p}, batch), enc_plain.apply({"params": without}, batch)
                               + np.array([-2.0, 0.5]), rtol=1e-6)
    gated = Hybrid(biased_cfg, DEBUG_TINY, 9, 20, (5, 6), LoraConfig(dropout=0.0))
    params = {**gated.init(jax.random.key(0), batch)["params"], "sasrec": p["sasrec"]}
    _, _, id_score, _ = gated.apply({"params": params}, batch, method=lambda m, b: m.collaborative_inputs(b))
    np.testing.assert_allclose(id_score, enc.apply({"params": p}, batch), rtol=1e-6)
    # the terms alone (what the item-text fit adds to <user, title vector>): the biases set above
    (terms,) = gated.apply({"params": params}, batch, method=Hybrid.encoder_terms)
    np.testing.assert_allclose(terms, [-2.0, 0.5], rtol=1e-6)


def test_residual_fusion_starts_as_the_encoder():
    """fusion: residual = SASRec's own <user, item> + a x the plain hybrid's score, a a mapper leaf at 0:
    at init the hybrid scores exactly as SASRec alone, and the first gradient moves only a."""
    from sasrecllm_jax.models.hybrid import EncoderScorer
    plain = _hybrid()
    res = Hybrid(dataclasses.replace(plain.cfg, mapper=dataclasses.replace(plain.cfg.mapper, fusion="residual")),
                 DEBUG_TINY, 9, 20, (5, 6), LoraConfig(dropout=0.0))
    batch = _batch()
    params = res.init(jax.random.key(0), batch)["params"]
    params = jax.tree_util.tree_map_with_path(lambda p, x: x + 0.1 if "'b'" in str(p) else x, params)  # LoRA b != 0
    assert params["mapper"]["llm_gate"] == 0.0 and partition.labels(params)["mapper"]["llm_gate"] == "mapper"
    id_score = EncoderScorer(plain.cfg, 9, 20).apply({"params": {"sasrec": params["sasrec"]}}, batch)
    np.testing.assert_array_equal(res.apply({"params": params}, batch), id_score)
    grads = jax.grad(lambda p: res.apply({"params": p}, batch).sum())(params)
    assert grads["mapper"]["llm_gate"] != 0 and not np.any(grads["mapper"]["fc2"]["kernel"])
    assert not any(np.any(g) for g in jax.tree_util.tree_leaves(grads["llm"]))
    params["mapper"]["llm_gate"] = jnp.float32(0.5)
    without = {**params, "mapper": {k: v for k, v in params["mapper"].items() if k != "llm_gate"}}
    np.testing.assert_allclose(res.apply({"params": params}, batch),
                               id_score + 0.5 * plain.apply({"params": without}, batch), rtol=1e-5, atol=1e-6)
    # llm_gate_init: a starts there (a late fusion's weight), the rest of the initialisation unchanged
    started = Hybrid(dataclasses.replace(res.cfg, mapper=dataclasses.replace(res.cfg.mapper, llm_gate_init=0.5)),
                     DEBUG_TINY, 9, 20, (5, 6), LoraConfig(dropout=0.0))
    init = started.init(jax.random.key(0), batch)["params"]
    assert init["mapper"]["llm_gate"] == 0.5
    chex.assert_trees_all_equal({**init, "mapper": {**init["mapper"], "llm_gate": 0.0}},
                                res.init(jax.random.key(0), batch)["params"])


def test_padding_does_not_change_a_score():
    model = _hybrid()
    batch = _batch()
    params = model.init(jax.random.key(0), batch)["params"]
    params = jax.tree_util.tree_map(lambda x: x + 0.02 * jax.random.normal(jax.random.key(4), x.shape), params)
    plain = model.apply({"params": params}, batch)
    padded = model.apply({"params": params}, _batch(pad_right=9))
    np.testing.assert_allclose(np.asarray(padded), np.asarray(plain), atol=1e-6)


def test_gradients_reach_only_what_trains():
    model = _hybrid()
    batch = _batch()
    params = model.init(jax.random.key(0), batch)["params"]
    params = jax.tree_util.tree_map_with_path(  # nonzero LoRA b so the adapters pass gradient to a
        lambda p, x: x + 0.1 if "'b'" in str(p) else x, params)
    trainable, frozen = partition.split(params, ["sasrec", "mapper"])
    loss = lambda t: jnp.sum(model.apply({"params": partition.merge(t, frozen)}, batch))
    grads = jax.grad(loss)(trainable)
    assert set(grads) == {"sasrec", "mapper"}
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        if "pos_emb" in str(path):  # rows past the history length get no gradient: check the used ones
            continue
        assert np.abs(np.asarray(g)).max() > 0, f"no gradient reaches {jax.tree_util.keystr(path)}"


def test_cheap_remat_redraws_the_same_dropout():
    """remat "cheap" recomputes the LoRA dropout in the backward pass: the mask must be the one the
    forward pass drew (same rng stream, same names), so loss and gradients equal remat "none"."""
    lora = LoraConfig(rank=4, dropout=0.5)
    ids = jax.random.randint(jax.random.key(3), (2, 10), 0, DEBUG_TINY.vocab_size)
    plain = LlamaForCausalLM(DEBUG_TINY, lora, deterministic=False)
    cheap = LlamaForCausalLM(dataclasses.replace(DEBUG_TINY, remat="cheap"), lora, deterministic=False)
    params = plain.init(jax.random.key(0), ids)["params"]
    assert jax.tree_util.tree_structure(cheap.init(jax.random.key(0), ids)["params"]) == \
        jax.tree_util.tree_structure(params)
    params = jax.tree_util.tree_map_with_path(lambda p, x: x + 0.05 if "'b'" in str(p) else x, params)
    adapters, frozen = partition.split({"llm": params}, ["lora"])

    def loss(model, a, key):
        out = model.apply({"params": partition.merge(a, frozen)["llm"]}, ids, logits_at=jnp.array([9, 9]),
                          rngs={"dropout": key})
        return jnp.sum(out ** 2)
    l0, g0 = jax.value_and_grad(lambda a: loss(plain, a, jax.random.key(7)))(adapters)
    l1, g1 = jax.value_and_grad(lambda a: loss(cheap, a, jax.random.key(7)))(adapters)
    l2 = loss(plain, adapters, jax.random.key(8))
    assert abs(float(l2) - float(l0)) > 1e-3 * abs(float(l0))  # the dropout is live: another key moves the loss
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    assert_close_to_scale(g1, g0)


@pytest.mark.parametrize("shape", [(3,), (7, 13), (2, 10, 64), (16, 128, 576)])
def test_fused_dropout_mask_is_jax_bernoulli(shape):
    """The LoRA dropout draws its mask with a written-out Threefry (one fused pass on CPU): bit for bit
    jax.random.bernoulli's mask for the same key."""
    from sasrecllm_jax.models.dropout import bernoulli_threefry
    for seed in range(3):
        key = jax.random.fold_in(jax.random.key(seed), 11)
        want = jax.random.bernoulli(key, 0.95, shape)
        got = jax.jit(bernoulli_threefry, static_argnums=(1, 2))(jax.random.key_data(key), 0.95, shape)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_sasrec_dropout_is_flax_dropout(monkeypatch):
    """SASRec's dropouts draw their masks in one fused pass: in training mode (every dropout on) the scores
    and gradients are bit for bit those of the same model built with flax.linen.Dropout."""
    import sasrecllm_jax.models.sasrec as sasrec_module
    cfg = SASRecConfig(hidden=16, num_blocks=2, num_heads=2, dropout=0.3, max_len=6)
    rng = np.random.default_rng(0)
    his = jnp.asarray(rng.integers(0, 12, (5, 6)), jnp.int32)
    uid, iid = jnp.arange(1, 6, dtype=jnp.int32), jnp.asarray(rng.integers(1, 12, 5), jnp.int32)
    params = SASRec(cfg, 11).init(jax.random.key(0), his, uid, iid)["params"]

    def scores_and_grads():
        model = SASRec(cfg, 11, deterministic=False)
        f = lambda p: model.apply({"params": p}, his, uid, iid, rngs={"dropout": jax.random.key(7)})
        return f(params), jax.grad(lambda p: f(p).sum())(params)
    ours = scores_and_grads()

    class Dropout(nn.Dropout):  # nn.Dropout (and its name); a block of a `whole` array: the whole array's, cut
        @nn.compact
        def __call__(self, x, deterministic=None, *, whole=None):
            if whole is None:
                return super().__call__(x, deterministic)
            block = tuple(slice(w - n, None) for n, w in zip(x.shape, whole))
            return super().__call__(jnp.zeros(whole, x.dtype).at[block].set(x), deterministic)[block]
    monkeypatch.setattr(sasrec_module, "Dropout", Dropout)
    flax_ = scores_and_grads()
    assert not np.allclose(ours[0], SASRec(cfg, 11).apply({"params": params}, his, uid, iid))  # dropout was on
    jax.tree_util.tree_map(np.testing.assert_array_equal, ours, flax_)


@pytest.mark.parametrize("blocks", [1, 3])
def test_sasrec_last_block_computes_the_last_position_alone(blocks):
    """Only the last position's output is read, so the last block computes it alone: with every dropout on,
    scores and gradients are those of SASRec run through every position of every block (the reference)."""
    class EveryPosition(SASRec):  # the reference code's loop: every position through every block
        def user_vector(self, his, uid=None):
            c, det = self.cfg, self.deterministic
            keep = (his != 0)[..., None]
            x = self.item_vector(his) * jnp.sqrt(c.hidden) + self.pos_emb(jnp.arange(his.shape[1]))[None]
            x = self.emb_dropout(x, deterministic=det) * keep
            for i in range(c.num_blocks):
                q = self.attention_layernorms[i](x)
                x = q + self.attention_layers[i](q, x)
                x = self.forward_layernorms[i](x)
                d1, d2 = self.forward_dropout[i]
                x = (x + d2(self.forward_fc2[i](d1(nn.relu(self.forward_fc1[i](x)), deterministic=det)),
                            deterministic=det)) * keep
            return self.last_layernorm(x)[:, -1]

    cfg = SASRecConfig(hidden=16, num_blocks=blocks, num_heads=2, dropout=0.3, max_len=7)
    rng = np.random.default_rng(1)
    his = rng.integers(1, 12, (6, 7))
    his[:2, :4] = 0  # short histories, left-padded
    his[2] = 0       # no history at all
    his, iid = jnp.asarray(his, jnp.int32), jnp.asarray(rng.integers(1, 12, 6), jnp.int32)
    params = SASRec(cfg, 11).init(jax.random.key(0), his, None, iid)["params"]

    def scores_and_grads(cls, key=7):
        f = lambda p: cls(cfg, 11, deterministic=False).apply({"params": p}, his, None, iid,
                                                              rngs={"dropout": jax.random.key(key)})
        return f(params), jax.grad(lambda p: (f(p) * jnp.arange(6)).sum())(params)
    ours, reference = scores_and_grads(SASRec), scores_and_grads(EveryPosition)
    assert not np.allclose(ours[0], scores_and_grads(SASRec, key=8)[0])  # the dropout is live
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-5), ours, reference)


def test_dropout_of_a_block_is_the_whole_arrays():
    """Dropout(x_block, whole=shape) gives the block the mask entries dropout of the whole array gives it;
    a block that is not a trailing block of that shape is refused."""
    from sasrecllm_jax.models.dropout import Dropout
    x = jax.random.normal(jax.random.key(0), (4, 5, 6))
    run = lambda x, **kw: Dropout(0.5).apply({}, x, False, rngs={"dropout": jax.random.key(3)}, **kw)
    np.testing.assert_array_equal(run(x[:, -2:, 1:], whole=x.shape), run(x)[:, -2:, 1:])
    for whole in [(4, 5), (4, 4, 6)]:  # another rank; a block larger than the whole
        with pytest.raises(ValueError, match="not a trailing block"):
            run(x, whole=whole)


def test_lora_dropout_is_flax_dropout():
    """LoRA's dropout module keeps nn.Dropout's name, rng stream and output: the adapter's numbers (and
    under nn.scan each layer's mask) are those of the flax.linen.Dropout it replaces."""
    from sasrecllm_jax.models.lora import LoRA, lora_a_init

    class FlaxLoRA(nn.Module):  # LoRA as written with nn.Dropout
        features: int
        cfg: LoraConfig

        @nn.compact
        def __call__(self, x):
            a = self.param("a", lora_a_init, (x.shape[-1], self.cfg.rank), jnp.float32)
            b = self.param("b", nn.initializers.zeros, (self.cfg.rank, self.features), jnp.float32)
            x = nn.Dropout(self.cfg.dropout)(x, deterministic=False)
            return (x @ a) @ b * self.cfg.scale

    cfg = LoraConfig(rank=4, alpha=8, dropout=0.3)
    x = jax.random.normal(jax.random.key(1), (2, 9, 32))
    params = LoRA(16, cfg, deterministic=False).init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x)
    params = jax.tree_util.tree_map(lambda v: v + 0.1, params)
    for seed in (5, 6):
        got = LoRA(16, cfg, deterministic=False).apply(params, x, rngs={"dropout": jax.random.key(seed)})
        want = FlaxLoRA(16, cfg).apply(params, x, rngs={"dropout": jax.random.key(seed)})
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    same = LoRA(16, cfg, deterministic=True).apply(params, x)
    np.testing.assert_allclose(np.asarray(same), np.asarray((x @ params["params"]["a"]) @ params["params"]["b"] * 2.0),
                               rtol=1e-6)


def assert_close_to_scale(got, want, rel=1e-5):
    """Each leaf equal up to `rel` of its largest magnitude: float rounding of a reordered sum, not an error."""
    def check(x, y):
        np.testing.assert_allclose(x, y, rtol=0, atol=rel * max(float(np.abs(y).max()), 1e-30))
    jax.tree_util.tree_map(check, got, want)


@pytest.mark.parametrize("remat", ["full", "dots", "cheap", "unroll2"])
def test_remat_and_bf16_keep_the_numbers(remat):
    lora = LoraConfig(rank=4, dropout=0.0)
    ids = jax.random.randint(jax.random.key(3), (2, 10), 0, DEBUG_TINY.vocab_size)
    base = LlamaForCausalLM(DEBUG_TINY, lora)
    params = base.init(jax.random.key(0), ids)["params"]
    params = jax.tree_util.tree_map_with_path(lambda p, x: x + 0.05 if "'b'" in str(p) else x, params)
    adapters, frozen = partition.split({"llm": params}, ["lora"])

    def loss(model, a):
        return jnp.sum(model.apply({"params": partition.merge(a, frozen)["llm"]}, ids, logits_at=jnp.array([9, 9])) ** 2)
    variant = {"scan_unroll": 2} if remat == "unroll2" else {"remat": remat}
    rematted = LlamaForCausalLM(dataclasses.replace(DEBUG_TINY, **variant), lora)
    l0, g0 = jax.value_and_grad(lambda a: loss(base, a))(adapters)
    l1, g1 = jax.value_and_grad(lambda a: loss(rematted, a))(adapters)
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    # recomputation fuses differently: fp32 gradients agree to float rounding, relative to each leaf's scale
    assert_close_to_scale(g1, g0)
    bf16 = LlamaForCausalLM(dataclasses.replace(DEBUG_TINY, param_dtype="bfloat16", dtype="bfloat16"), lora)
    cast = jax.tree_util.tree_map_with_path(
        lambda p, x: x if "lora" in str(p) else x.astype(jnp.bfloat16), params)
    assert cast["model"]["layers"]["self_attn"]["q_proj"]["lora"]["a"].dtype == jnp.float32
    out32 = base.apply({"params": params}, ids, logits_at=jnp.array([9, 9]))
    out16 = bf16.apply({"params": cast}, ids, logits_at=jnp.array([9, 9]))
    assert out16.dtype == jnp.float32 and np.abs(np.asarray(out16) - np.asarray(out32)).max() < 0.05


def test_zero_output_mapper_starts_as_the_text_model():
    """mapper.out_init: zeros. At init the soft tokens are zero vectors, so the score equals the score with
    the collaborative tokens dropped; the output layer gets a gradient, the hidden layer none yet."""
    plain = _hybrid()
    zero = Hybrid(dataclasses.replace(plain.cfg, mapper=dataclasses.replace(plain.cfg.mapper, out_init="zeros")),
                  DEBUG_TINY, 9, 20, (5, 6), LoraConfig(dropout=0.0))
    batch = _batch()
    params = zero.init(jax.random.key(0), batch)["params"]
    assert not np.any(params["mapper"]["fc2"]["kernel"]) and np.any(plain.init(jax.random.key(0), batch)[
        "params"]["mapper"]["fc2"]["kernel"])
    np.testing.assert_allclose(zero.apply({"params": params}, batch),
                               zero.apply({"params": params}, {**batch, "collab_scale": jnp.zeros(2)}), atol=1e-6)
    grads = jax.grad(lambda m: zero.apply({"params": {**params, "mapper": m}}, batch).sum())(params["mapper"])
    assert np.abs(grads["fc2"]["kernel"]).max() > 0 and not np.any(grads["fc1"]["kernel"])
