"""Matrix factorisation: score = <user_emb[uid], item_emb[iid]>."""
from __future__ import annotations

import jax.numpy as jnp
import flax.linen as nn

from sasrecllm_jax.config import MFConfig


class MF(nn.Module):
    cfg: MFConfig
    num_users: int
    num_items: int
    deterministic: bool = True  # same signature as SASRec; MF has no dropout

    def setup(self):
        init = nn.initializers.normal(0.1)
        self.user_emb = nn.Embed(self.num_users + 1, self.cfg.dim, embedding_init=init)
        self.item_emb = nn.Embed(self.num_items + 1, self.cfg.dim, embedding_init=init)

    def user_vector(self, his, uid):
        return self.user_emb(uid)

    def item_vector(self, items):
        return self.item_emb(items)

    def score(self, user, item, uid, iid):
        return jnp.sum(user * item, axis=-1)

    def __call__(self, his, uid, iid):
        return self.score(self.user_vector(his, uid), self.item_vector(iid), uid, iid)
