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

from sasrecllm_jax.config import ModelConfig, PopConfig
from sasrecllm_jax.errors import DataError

COUNTS = "counts"  # the subtree that holds counted terms: no phase trains it (group `counts`)


def _logit(p):
    return np.log(p) - np.log1p(-p)


def count_logits(train, num_users: int, num_items: int, prior: float,
                 where: str = "the train split") -> tuple[np.ndarray, np.ndarray]:
    """(user term [num_users + 1], item term [num_items + 1]) from a train table (uid, iid, label)."""
    labels = train["label"].to_numpy(np.float64)
    g = labels.mean()
    if not 0.0 < g < 1.0:
        raise DataError(f"{where}: every label is {int(g)} (the positive rate is {g}), so counted tendencies "
                        f"(method pop, model.sasrec.bias: counts) cannot rank anything; they need liked and "
                        f"not-liked rows (a positive-only log: prepare it with --negatives N)")

    def smoothed(ids, size):
        pos = np.bincount(ids, weights=labels, minlength=size + 1)
        n = np.bincount(ids, minlength=size + 1)
        return _logit((pos + prior * g) / (n + prior))

    user = smoothed(train["uid"].to_numpy(), num_users) - _logit(g)
    item = smoothed(train["iid"].to_numpy(), num_items)
    return user.astype(np.float32), item.astype(np.float32)


def counted_params(cfg: ModelConfig, train, num_users: int, num_items: int, where: str) -> dict:
    """The encoder's counted subtree, to merge into its freshly initialised params: method pop's terms,
    SASRec's with `bias: counts`, else none."""
    if cfg.encoder != "pop" and not (cfg.encoder == "sasrec" and cfg.sasrec.bias == "counts"):
        return {}
    user, item = count_logits(train, num_users, num_items, cfg.pop.prior, where)
    return {COUNTS: {"user": user, "item": item}}


class CountTerms(nn.Module):
    """A user term and an item term per id (filled with counted log-odds, never trained)."""
    num_users: int
    num_items: int

    def setup(self):
        self.user = self.param("user", nn.initializers.zeros, (self.num_users + 1,))
        self.item = self.param("item", nn.initializers.zeros, (self.num_items + 1,))

    def user_term(self, uid):
        return self.user[uid]

    def item_term(self, iid):
        return self.item[iid]


class Pop(nn.Module):
    """score = user term[uid] + item term[iid]; its params are counted (`count_logits`), never trained."""
    cfg: PopConfig
    num_users: int
    num_items: int
    deterministic: bool = True  # the encoders' signature

    def setup(self):
        setattr(self, COUNTS, CountTerms(self.num_users, self.num_items))

    def __call__(self, his, uid, iid):
        counts = getattr(self, COUNTS)
        return counts.user_term(uid) + counts.item_term(iid)
