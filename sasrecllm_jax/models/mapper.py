"""The mapper: one MLP shared by user and item vectors into k soft tokens of the LLM's width.

With `new_items: unknown` it also holds what the item token shows for an item the encoder never
trained on: one learned vector `unknown_item` [d_enc] (starting at zero), used for every target item
whose `counts/item_seen` flag is 0 (no train row; counted from the train split, never trained) and, in
training, for a random `item_dropout` share of rows. With `new_items: text` such an item (and row) shows
instead the vector its title predicts: `counts/item_text[iid]` [d_enc], fitted when the first hybrid phase
starts (sasrecllm_jax/item_text.py) and never trained. With `unknown_id_score: learned` one learned number
`unknown_score` stands for the ID score of those rows; with `offset` it is added to the encoder's. With
`inject: cross` it also holds the decoder's cross-attention weights, `cross/{q,k,v,o}` and the gates
`cross/gate`, stacked over the decoder's layers (models/llama.py: cross_attend).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from sasrecllm_jax.config import MapperConfig
from sasrecllm_jax.models.pop import COUNTS

# the mapper's learned numbers that fuse the LLM's score with the ID score (each present with its option)
FUSION_NUMBERS = ("id_gate", "llm_gate", "llm_gate_unknown", "unknown_score")


class SeenItems(nn.Module):
    """item_seen[iid]: 1 for an item with a train row, 0 for one without (filled from the train split); with
    d_text, item_text[iid] [d_text]: the item's title-predicted encoder vector (zero until fitted)."""
    num_items: int
    d_text: int = 0

    def setup(self):
        self.item_seen = self.param("item_seen", nn.initializers.zeros, (self.num_items + 1,))
        if self.d_text:
            self.item_text = self.param("item_text", nn.initializers.zeros, (self.num_items + 1, self.d_text))


def counted_seen_items(cfg: MapperConfig, train, num_items: int, d_enc: int) -> dict:
    """The mapper's counted subtree, to merge into its freshly initialised params: with `new_items: unknown`
    or `text` the item_seen flags of the items that `train` (a table with iid) names (and with text the
    item_text table, zero until its fit), else none."""
    if cfg.new_items == "id":
        return {}
    seen = np.zeros(num_items + 1, np.float32)
    seen[train["iid"].to_numpy()] = 1.0
    text = {"item_text": jnp.zeros((num_items + 1, d_enc), jnp.float32)} if cfg.new_items == "text" else {}
    return {COUNTS: {"item_seen": jnp.asarray(seen), **text}}


def cross_init(key, num_layers: int, d_model: int, rank: int) -> dict:
    """Per decoder layer: q, k, v [d_model, rank], o [rank, d_model] (normal, 1 / sqrt(fan in)) and a gate
    (0: the cross-attention adds nothing at the start), stacked over the layers."""
    L, d, r = num_layers, d_model, rank
    kq, kk, kv, ko = jax.random.split(key, 4)
    dense = lambda k, shape: jax.random.normal(k, (L, *shape), jnp.float32) / np.sqrt(shape[0])
    return {"q": dense(kq, (d, r)), "k": dense(kk, (d, r)), "v": dense(kv, (d, r)), "o": dense(ko, (r, d)),
            "gate": jnp.zeros((L,), jnp.float32)}


class Mapper(nn.Module):
    cfg: MapperConfig
    d_model: int
    d_enc: int                         # the encoder's vector width (read with new_items: unknown or text)
    num_items: int                     # (read with new_items: unknown or text)
    deterministic: bool = True         # False (training): item_dropout applies, drawn from the "dropout" stream
    num_layers: int = 0                # the decoder's (read with inject: cross)

    def setup(self):
        self.fc1 = nn.Dense(self.cfg.hidden)
        out_init = nn.initializers.zeros if self.cfg.out_init == "zeros" else nn.linear.default_kernel_init
        self.fc2 = nn.Dense(self.d_model * self.cfg.num_tokens, kernel_init=out_init)
        if self.cfg.fusion == "gate":
            self.id_gate = self.param("id_gate", nn.initializers.ones, ())
        if self.cfg.fusion == "residual":
            if self.cfg.llm_gates != "unknown_only":  # (unknown_only: no weight where the item is known)
                self.llm_gate = self.param("llm_gate", nn.initializers.constant(self.cfg.llm_gate_init), ())
            if self.cfg.llm_gates != "one":
                self.llm_gate_unknown = self.param("llm_gate_unknown", nn.initializers.constant(self.cfg.llm_gate_init), ())
        if self.cfg.new_items == "unknown":
            self.unknown_item = self.param("unknown_item", nn.initializers.zeros, (self.d_enc,))
        if self.cfg.unknown_id_score != "encoder":
            self.unknown_score = self.param("unknown_score", nn.initializers.constant(self.cfg.unknown_score_init), ())
        if self.cfg.new_items != "id":
            setattr(self, COUNTS, SeenItems(self.num_items, self.d_enc if self.cfg.new_items == "text" else 0))
        if self.cfg.inject == "cross":
            self.cross = self.param("cross", cross_init, self.num_layers, self.d_model, self.cfg.cross_rank)

    def cross_weights(self) -> dict:
        """The decoder's cross-attention weights {q, k, v, o, gate}, stacked over its layers (inject: cross)."""
        return self.cross

    def __call__(self, x):
        """[..., d_enc] -> [..., k, d_model]."""
        y = self.fc2(nn.relu(self.fc1(x)))
        return y.reshape(*x.shape[:-1], self.cfg.num_tokens, self.d_model)

    def item_input(self, item_vector, iid):
        """(vector [B, d_enc], known [B] bool): the encoder vector that stands for each target item iid [B]
        and whether it is the item's own. With `new_items: unknown` an item without train rows (and, when
        not deterministic, each row with probability item_dropout) shows the shared unknown vector; with
        `new_items: text`, the vector its title predicts."""
        if self.cfg.new_items == "id":
            return item_vector, jnp.ones(iid.shape, bool)
        counts = getattr(self, COUNTS)
        seen = counts.item_seen[iid] > 0
        if not self.deterministic and self.cfg.item_dropout > 0:
            seen &= ~jax.random.bernoulli(self.make_rng("dropout"), self.cfg.item_dropout, iid.shape)
        other = counts.item_text[iid] if self.cfg.new_items == "text" else self.unknown_item
        return jnp.where(seen[..., None], item_vector, other.astype(item_vector.dtype)), seen

    def id_score(self, encoder_score, known):
        """The ID score [B] the fusion adds: the encoder's; on rows whose item is not shown by its own vector,
        with `unknown_id_score: learned` the learned unknown_score instead, with `offset` the encoder's plus it."""
        if self.cfg.unknown_id_score == "encoder":
            return encoder_score
        u = self.unknown_score.astype(encoder_score.dtype)
        return jnp.where(known, encoder_score, u if self.cfg.unknown_id_score == "learned" else encoder_score + u)

    def fuse(self, llm_score, id_score, known=None):
        """The hybrid's score: the LLM's ("none"), plus g x the ID score ("gate"), or the ID score plus
        a x the LLM's ("residual"; a starts at llm_gate_init: from 0, the first step moves only a, ReZero's start;
        with `llm_gates: known_unknown`, a is llm_gate where `known` (rows whose item shows its own vector) and
        llm_gate_unknown elsewhere; with `unknown_only`, the ID score alone where `known`, whatever the LLM's)."""
        if self.cfg.fusion == "gate":
            return llm_score + self.id_gate * id_score
        if self.cfg.fusion == "residual":
            if self.cfg.llm_gates == "unknown_only":
                return jnp.where(known, id_score, id_score + self.llm_gate_unknown.astype(llm_score.dtype) * llm_score)
            gate = self.llm_gate
            if self.cfg.llm_gates == "known_unknown":
                gate = jnp.where(known, gate, self.llm_gate_unknown).astype(llm_score.dtype)
            return id_score + gate * llm_score
        return llm_score
