"""Shared-prefix packing: every row's score in a pack is the score it gets alone, for the splits' rows and
for ranking's candidates (one user, many targets); and the packs do share (fewer sequences than rows)."""
import jax
import numpy as np
import pandas as pd
import pytest

from helpers import ONE_SHAPE, smoke_config, synthetic_dataset
from sasrecllm_jax.assembly import Assembly
from sasrecllm_jax.data import packing
from sasrecllm_jax.evaluate import Scorer, score_split


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


def both_ways(cfg, comp, params, data, prompt, batch_size):
    scorer = Scorer(comp.model(prompt, deterministic=True))
    alone = score_split(scorer, params, data, batch_size, cfg.data.pad_multiple, True)
    packed = score_split(scorer, params, data, batch_size, cfg.data.pad_multiple, True, share_prefix=True)
    cap = -(-int(data.lengths().max()) // cfg.data.pad_multiple) * cfg.data.pad_multiple
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
