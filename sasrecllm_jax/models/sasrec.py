"""SASRec (Kang & McAuley 2018) as the reference code runs it (Kang & McAuley's reference PyTorch code).

    x = item_emb(seq) * sqrt(d) + pos_emb(0..L-1); dropout; pads zeroed
    per block: Q = LN(x); x = Q + MHA(Q, x, x, causal); x = LN(x); x = x + FFN(x); pads zeroed
    user vector = LN(x)[:, -1]      (left-padded: the last position is the most recent item; the last
                                     block computes only that position, with the same dropout masks)
    item vector = item_emb(item)    (raw, unscaled)
    score = <user vector, item vector>  (not in the reference: + user_bias[uid] + item_bias[iid] with
                                         `bias: learned`, + counts/user[uid] + counts/item[iid] with
                                         `bias: counts`, fixed counted log-odds of group counts)

Item 0 is padding: its embedding reads as zero. `deterministic=True` turns every dropout off
(a frozen SASRec always runs so).
"""
from __future__ import annotations

import jax.numpy as jnp
import flax.linen as nn

from sasrecllm_jax.config import SASRecConfig
from sasrecllm_jax.models.dropout import Dropout
from sasrecllm_jax.models.pop import COUNTS, CountTerms

LN_EPS = 1e-8
init = nn.initializers.xavier_normal()


class CausalSelfAttention(nn.Module):
    """torch.nn.MultiheadAttention(query=Q, key=x, value=x) with a causal mask."""
    hidden: int
    num_heads: int
    dropout: float
    deterministic: bool = True

    @nn.compact
    def __call__(self, q_in, kv_in):
        """q_in [B, Lq, D]: the queries of the last Lq positions of kv_in [B, L, D] (Lq = L: every position)."""
        B, Lq, D = q_in.shape
        L = kv_in.shape[1]
        H = self.num_heads
        dense = lambda n: nn.Dense(D, kernel_init=init, name=n)
        split = lambda t: t.reshape(B, t.shape[1], H, D // H).transpose(0, 2, 1, 3)
        q, k, v = split(dense("q")(q_in)), split(dense("k")(kv_in)), split(dense("v")(kv_in))
        logits = q @ k.transpose(0, 1, 3, 2) / jnp.sqrt(D // H)
        causal = jnp.tril(jnp.ones((L, L), bool))[L - Lq:]
        weights = nn.softmax(jnp.where(causal, logits, -jnp.inf), axis=-1)
        weights = Dropout(self.dropout)(weights, deterministic=self.deterministic, whole=(B, H, L, L))
        out = (weights @ v).transpose(0, 2, 1, 3).reshape(B, Lq, D)
        return dense("out")(out)


class SASRec(nn.Module):
    cfg: SASRecConfig
    num_items: int
    deterministic: bool = True
    num_users: int = 0                 # read only with a bias

    def setup(self):
        c = self.cfg
        if c.hidden % c.num_heads:
            raise ValueError(f"sasrec.hidden {c.hidden} is not divisible by sasrec.num_heads {c.num_heads}")
        self.item_emb = nn.Embed(self.num_items + 1, c.hidden, embedding_init=init)
        self.pos_emb = nn.Embed(c.max_len, c.hidden, embedding_init=init)
        drop = lambda: Dropout(c.dropout)  # nn.Dropout's masks, drawn in one fused pass
        self.emb_dropout = drop()
        self.attention_layernorms = [nn.LayerNorm(LN_EPS) for _ in range(c.num_blocks)]
        self.attention_layers = [CausalSelfAttention(c.hidden, c.num_heads, c.dropout, self.deterministic)
                                 for _ in range(c.num_blocks)]
        self.forward_layernorms = [nn.LayerNorm(LN_EPS) for _ in range(c.num_blocks)]
        self.forward_fc1 = [nn.Dense(c.hidden, kernel_init=init) for _ in range(c.num_blocks)]
        self.forward_fc2 = [nn.Dense(c.hidden, kernel_init=init) for _ in range(c.num_blocks)]
        self.forward_dropout = [(drop(), drop()) for _ in range(c.num_blocks)]
        self.last_layernorm = nn.LayerNorm(LN_EPS)
        if c.bias == "learned":
            self.user_bias = nn.Embed(self.num_users + 1, 1, embedding_init=nn.initializers.zeros)
            self.item_bias = nn.Embed(self.num_items + 1, 1, embedding_init=nn.initializers.zeros)
        if c.bias == "counts":  # filled with the counted log-odds when params are built; group counts
            setattr(self, COUNTS, CountTerms(self.num_users, self.num_items))

    def _terms(self, uid, iid):
        """The user and item terms [B] added to the score (bias learned or counts)."""
        if self.cfg.bias == "learned":
            return self.user_bias(uid)[:, 0], self.item_bias(iid)[:, 0]
        counts = getattr(self, COUNTS)
        return counts.user_term(uid), counts.item_term(iid)

    def item_vector(self, items):
        """[...] item ids -> [..., d]; id 0 (padding) reads as zero."""
        return self.item_emb(items) * (items != 0)[..., None]

    def user_vector(self, his, uid=None):
        """his: [B, L] left-padded item ids (0 = pad) -> [B, d]. `uid` is unused (MF's signature)."""
        c = self.cfg
        det = self.deterministic
        keep = (his != 0)[..., None]
        x = self.item_vector(his) * jnp.sqrt(c.hidden) + self.pos_emb(jnp.arange(his.shape[1]))[None]
        x = self.emb_dropout(x, deterministic=det) * keep
        B, L = his.shape
        rows_of = lambda t: (B, L, t.shape[-1])  # the shape of t with every position computed
        for i in range(c.num_blocks):
            # only the last position is read: the last block computes it alone (its keys and values still
            # span the history), with the dropout masks it gets when every position is computed
            rows = x[:, -1:] if i == c.num_blocks - 1 else x
            q = self.attention_layernorms[i](rows)
            x = q + self.attention_layers[i](q, x)
            x = self.forward_layernorms[i](x)
            d1, d2 = self.forward_dropout[i]
            h = nn.relu(self.forward_fc1[i](x))
            h = d1(h, deterministic=det, whole=rows_of(h))
            f = self.forward_fc2[i](h)
            x = x + d2(f, deterministic=det, whole=rows_of(f))
            x = x * keep[:, -x.shape[1]:]
        return self.last_layernorm(x[:, -1])

    def score(self, user, item, uid, iid):
        """The encoder's score of user and item vectors [B, d] -> [B]."""
        s = jnp.sum(user * item, axis=-1)
        if self.cfg.bias != "none":
            user_term, item_term = self._terms(uid, iid)
            s = s + user_term + item_term
        return s

    def __call__(self, his, uid, iid):
        """Pointwise score (pretraining with BCE)."""
        return self.score(self.user_vector(his, uid), self.item_vector(iid), uid, iid)
