"""Rating tendencies from counts: how generously each user rates and how well each item is liked.

    item term  = logit((pos_i + prior * g) / (n_i + prior))        g = the train split's positive rate
    user term  = logit((pos_u + prior * g) / (n_u + prior)) - logit(g)
    score      = user term + item term

counted on the train split only (a user or item absent from it gets the global rate: user term 0,
item term logit(g)). `Pop` scores with them alone (method `pop`, nothing trained): the baseline that
says how much of a pooled AUC is tendencies rather than taste. `model.sasrec.bias: counts` adds them,
fixed, to SASRec's score.
"""
from __future__ import annotations

import flax.linen as nn
import numpy as np

from sasrecllm_jax.config import PopConfig


def _logit(p):
    return np.log(p) - np.log1p(-p)


def count_logits(train, num_users: int, num_items: int, prior: float) -> tuple[np.ndarray, np.ndarray]:
    """(user term [num_users + 1], item term [num_items + 1]) from a train table (uid, iid, label)."""
    labels = train["label"].to_numpy(np.float64)
    g = labels.mean()
    if not 0.0 < g < 1.0:
        raise ValueError(f"the train split's positive rate is {g}: counts cannot rank anything")

    def smoothed(ids, size):
        pos = np.bincount(ids, weights=labels, minlength=size + 1)
        n = np.bincount(ids, minlength=size + 1)
        return _logit((pos + prior * g) / (n + prior))

    user = smoothed(train["uid"].to_numpy(), num_users) - _logit(g)
    item = smoothed(train["iid"].to_numpy(), num_items)
    return user.astype(np.float32), item.astype(np.float32)


class Pop(nn.Module):
    """score = user term[uid] + item term[iid]; its params are counted (`count_logits`), never trained."""
    cfg: PopConfig
    num_users: int
    num_items: int
    deterministic: bool = True  # the encoders' signature

    def setup(self):
        self.user_logit = self.param("user_logit", nn.initializers.zeros, (self.num_users + 1,))
        self.item_logit = self.param("item_logit", nn.initializers.zeros, (self.num_items + 1,))

    def __call__(self, his, uid, iid):
        return self.user_logit[uid] + self.item_logit[iid]
