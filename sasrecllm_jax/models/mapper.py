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
        if self.cfg.fusion == "residual":
            self.llm_gate = self.param("llm_gate", nn.initializers.zeros, ())

    def __call__(self, x):
        """[..., d_enc] -> [..., k, d_model]."""
        y = self.fc2(nn.relu(self.fc1(x)))
        return y.reshape(*x.shape[:-1], self.cfg.num_tokens, self.d_model)

    def fuse(self, llm_score, id_score):
        """The hybrid's score: the LLM's ("none"), plus g x the ID score ("gate"), or the ID score plus
        a x the LLM's ("residual"; a starts at 0, so the first step moves only a: ReZero's start)."""
        if self.cfg.fusion == "gate":
            return llm_score + self.id_gate * id_score
        if self.cfg.fusion == "residual":
            return id_score + self.llm_gate * llm_score
        return llm_score
