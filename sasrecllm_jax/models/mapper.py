"""The mapper: one MLP shared by user and item vectors into k soft tokens of the LLM's width."""
from __future__ import annotations

import flax.linen as nn

from sasrecllm_jax.config import MapperConfig


class Mapper(nn.Module):
    cfg: MapperConfig
    d_model: int

    def setup(self):
        self.fc1 = nn.Dense(self.cfg.hidden)
        out_init = nn.initializers.zeros if self.cfg.out_init == "zeros" else nn.linear.default_kernel_init
        self.fc2 = nn.Dense(self.d_model * self.cfg.num_tokens, kernel_init=out_init)
        if self.cfg.fusion == "gate":
            self.id_gate = self.param("id_gate", nn.initializers.ones, ())

    def __call__(self, x):
        """[..., d_enc] -> [..., k, d_model]."""
        y = self.fc2(nn.relu(self.fc1(x)))
        return y.reshape(*x.shape[:-1], self.cfg.num_tokens, self.d_model)

    def fuse(self, llm_score, id_score):
        """The hybrid's score: the LLM's, plus the gated ID score when cfg.fusion == "gate"."""
        if self.cfg.fusion == "gate":
            return llm_score + self.id_gate * id_score
        return llm_score
