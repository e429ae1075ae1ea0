"""The mapper: one MLP shared by user and item vectors into k soft tokens of the LLM's width."""
from __future__ import annotations

import flax.linen as nn

from sasrecllm_jax.config import MapperConfig


class Mapper(nn.Module):
    cfg: MapperConfig
    d_model: int

    @nn.compact
    def __call__(self, x):
        """[..., d_enc] -> [..., k, d_model]."""
        h = nn.relu(nn.Dense(self.cfg.hidden, name="fc1")(x))
        y = nn.Dense(self.d_model * self.cfg.num_tokens, name="fc2")(h)
        return y.reshape(*x.shape[:-1], self.cfg.num_tokens, self.d_model)
