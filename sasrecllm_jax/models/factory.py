"""Models and their initial parameters, from a model config, the dataset's id ranges and the backbone.

`build_model(prompt)` gives the scorer for a prompt kind: the encoder alone ("none"), or the hybrid
over text or hybrid prompts. `init_params` initialises only what trains (encoder, mapper, LoRA) and
places the loaded LLM base beside it; `jax.eval_shape` gives the tree to check against, so a large
model is never initialised just to be overwritten.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import pandas as pd

from sasrecllm_jax.config import ModelConfig
from sasrecllm_jax.errors import ConfigError
from sasrecllm_jax.models.hybrid import EncoderScorer, Hybrid, encoder_width, make_encoder
from sasrecllm_jax.models.lora import init_adapters
from sasrecllm_jax.models.mapper import Mapper, counted_seen_items
from sasrecllm_jax.models.pop import counted_params
from sasrecllm_jax.trees import merge
from sasrecllm_jax.weights.backbone import Backbone


@dataclasses.dataclass(frozen=True)
class ModelFactory:
    cfg: ModelConfig
    num_users: int
    num_items: int
    backbone: Backbone | None = None   # None for the ID models alone

    def build(self, prompt: str, deterministic: bool, frozen: tuple[str, ...] = ()):
        """The scorer of a prompt kind; `frozen` groups run without dropout."""
        if prompt == "none":
            return EncoderScorer(self.cfg, self.num_users, self.num_items, deterministic)
        b = self.backbone
        return Hybrid(self.cfg, b.llm_cfg, self.num_users, self.num_items, b.answer_ids, self.cfg.lora,
                      deterministic, tuple(frozen))

    def init_params(self, key, train: pd.DataFrame, where: str) -> dict:
        """Fresh encoder, mapper and LoRA parameters around the loaded LLM base; counted terms from `train`."""
        m = self.cfg
        k_enc, k_map, k_lora = jax.random.split(key, 3)
        dummy = (jnp.zeros((1, m.sasrec.max_len), jnp.int32), jnp.ones((1,), jnp.int32), jnp.ones((1,), jnp.int32))
        # jitted: one compilation, instead of one per operation of an eager init (seconds per run)
        encoder = make_encoder(m, self.num_users, self.num_items, True)
        params = {m.encoder: jax.jit(encoder.init)(k_enc, *dummy)["params"]}
        counted = counted_params(m, train, self.num_users, self.num_items, where)
        params[m.encoder] = {**params[m.encoder], **jax.tree_util.tree_map(jnp.asarray, counted)}
        if self.backbone is None:
            return params
        d_enc = encoder_width(m)
        mapper = Mapper(m.mapper, self.backbone.llm_cfg.hidden_size, d_enc, self.num_items,
                        num_layers=self.backbone.llm_cfg.num_layers)
        params["mapper"] = {**jax.jit(mapper.init)(k_map, jnp.zeros((1, d_enc)))["params"],
                            **counted_seen_items(m.mapper, train, self.num_items, d_enc)}
        batch = {"tokens": jnp.zeros((1, 8), jnp.int32), "mask": jnp.ones((1, 8), jnp.int32),
                 "user_pos": jnp.zeros((1,), jnp.int32), "item_pos": jnp.full((1,), 2, jnp.int32),
                 "his": dummy[0], "uid": dummy[1], "iid": dummy[2]}
        abstract = jax.eval_shape(self.build("hybrid", True).init, key, batch)["params"]
        params["llm"] = merge(self.backbone.params, init_adapters(abstract["llm"], k_lora, m.lora))
        want = jax.tree_util.tree_map(lambda x: (x.shape, jnp.dtype(x.dtype)), abstract)
        have = jax.tree_util.tree_map(lambda x: (x.shape, jnp.dtype(x.dtype)), params)
        if want != have:
            raise ConfigError("the loaded weights do not fit the model built from the config; check model.llm "
                              "and model.llm_overrides against the checkpoint")
        return params
