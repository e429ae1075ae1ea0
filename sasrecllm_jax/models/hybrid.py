"""SASRecLLM: an ID encoder's vectors, mapped into the LLM's embedding space, spliced into a prompt.

Parameters: {encoder name ("sasrec" | "mf"): ..., "mapper": ..., "llm": {"model": ..., "lm_head"?: ...}}.

A batch (see sasrecllm_jax.data.pipeline) carries `tokens`, `mask` [B, T]; for hybrid prompts
`user_pos`, `item_pos` [B] (the first of k placeholder positions), `his` [B, L], `uid`, `iid` [B];
and the ablation inputs `collab_scale` [B] (1 keeps, 0 drops the collaborative tokens) and
`collab_perm` [B] (a permutation of rows: shuffles them). The score is the raw "Yes" logit at the
last prompt position, or the Yes-minus-No log-odds; with `model.mapper.fusion: gate` the mapper adds a
learned multiple of the encoder's own score (<user, item>, plus SASRec's user and item terms if it has
them) to it, and with `fusion: residual` the score is the encoder's plus a learned multiple (starting at
llm_gate_init) of the LLM's. With `new_items: unknown` and `unknown_id_score: learned`, a row whose item
is shown as unknown adds one learned number in place of the encoder's score (and with
`unknown_item_vectors: none` gets no vectors). With `model.mapper.inject:
last` the prompt is the text template and the user's and item's vectors are added to the input embedding
at `item_pos`, the last position, instead of filling placeholders; with `inject: cross` the text template
too, and the last position reads the vectors through a gated cross-attention in every decoder layer (its
weights the mapper's: models/llama.py cross_attend).
"""
from __future__ import annotations

import chex
import jax.numpy as jnp
import flax.linen as nn

from sasrecllm_jax.config import LlamaConfig, LoraConfig, ModelConfig
from sasrecllm_jax.models.llama import LlamaForCausalLM, last_positions
from sasrecllm_jax.models.mapper import Mapper
from sasrecllm_jax.models.mf import MF
from sasrecllm_jax.models.pop import Pop
from sasrecllm_jax.models.sasrec import SASRec


def encoder_width(cfg: ModelConfig) -> int:
    """The width of the encoder's user and item vectors."""
    return cfg.sasrec.hidden if cfg.encoder == "sasrec" else cfg.mf.dim


def make_encoder(cfg: ModelConfig, num_users: int, num_items: int, deterministic: bool):
    if cfg.encoder == "sasrec":
        return SASRec(cfg.sasrec, num_items, deterministic, num_users)
    if cfg.encoder == "pop":
        return Pop(cfg.pop, num_users, num_items, deterministic)
    return MF(cfg.mf, num_users, num_items, deterministic)


class _HasEncoder:
    """The encoder lives under its own name ("sasrec" / "mf"), which is also its parameter group."""

    def _set_encoder(self, encoder):
        setattr(self, self.cfg.encoder, encoder)

    @property
    def encoder(self):
        return getattr(self, self.cfg.encoder)


def zeroed(x, keep):
    """x with the rows where keep [B] is False set to exactly zero, whatever they held (a multiply by 0
    would keep a non-finite value non-finite)."""
    return jnp.where(keep.reshape(keep.shape + (1,) * (x.ndim - keep.ndim)), x, jnp.zeros((), x.dtype))


class Hybrid(_HasEncoder, nn.Module):
    cfg: ModelConfig
    llm_cfg: LlamaConfig
    num_users: int
    num_items: int
    answer_ids: tuple[int, int]            # (yes, no) token ids
    lora: LoraConfig | None = None
    deterministic: bool = True
    frozen: tuple[str, ...] = ()           # groups that always run deterministically (no dropout)

    def setup(self):
        det = lambda group: self.deterministic or group in self.frozen
        self._set_encoder(make_encoder(self.cfg, self.num_users, self.num_items, det(self.cfg.encoder)))
        # item_dropout is part of training the hybrid, whichever of its groups the phase trains
        self.mapper = Mapper(self.cfg.mapper, self.llm_cfg.hidden_size, encoder_width(self.cfg), self.num_items,
                             self.deterministic, self.llm_cfg.num_layers)
        self.llm = LlamaForCausalLM(self.llm_cfg, self.lora, det("lora"))

    def collaborative_inputs(self, batch):
        """The user's and the target item's soft tokens [B, k, d_model], the encoder's own score [B] and
        whether each row's item shows its own vector [B], with the ablation masks applied to all four (a
        shuffle moves the flag with the rest; a dropped row shows no item of its own: with two LLM gates it
        gets the unknown items' gate, so whether the ID model knows the item does not reach it either). An
        item the encoder has no train row for shows the
        mapper's unknown vector with `model.mapper.new_items: unknown` (and the ID score uses it too, or with
        `unknown_id_score: learned` is the mapper's unknown_score; with `unknown_item_vectors: none` such a
        row's user and item vectors are zero)."""
        u, i, known, id_score = self._id_side(batch)
        user, item = self.mapper(u), self.mapper(i)
        if self.cfg.mapper.unknown_item_vectors == "none":  # (inject: last or cross) nothing reaches these rows
            user, item = zeroed(user, known), zeroed(item, known)
        perm = batch.get("collab_perm")
        if perm is not None:
            user, item, id_score, known = user[perm], item[perm], id_score[perm], known[perm]
        scale = batch.get("collab_scale")
        if scale is not None:
            keep = scale != 0
            user, item = zeroed(user * scale[:, None, None], keep), zeroed(item * scale[:, None, None], keep)
            id_score, known = zeroed(id_score * scale, keep), known & keep
        return user, item, id_score, known

    def _id_side(self, batch):
        """(user vector, item vector, known [B], ID score [B]) of rows (his, uid, iid), before any ablation."""
        u = self.encoder.user_vector(batch["his"], batch["uid"])
        i, known = self.mapper.item_input(self.encoder.item_vector(batch["iid"]), batch["iid"])
        return u, i, known, self.mapper.id_score(self.encoder.score(u, i, batch["uid"], batch["iid"]), known)

    def user_vectors(self, batch):
        """(the encoder's user vector [B, d] of rows (his, uid),): what the item-text fit scores items against."""
        return (self.encoder.user_vector(batch["his"], batch["uid"]),)

    def encoder_terms(self, batch):
        """(what the encoder's score adds to <user, item> on rows (his, uid, iid) [B]: SASRec's user and item
        terms with model.sasrec.bias, else 0,)."""
        u = self.encoder.user_vector(batch["his"], batch["uid"])
        return (self.encoder.score(u, jnp.zeros_like(u), batch["uid"], batch["iid"]),)

    def item_vectors(self):
        """[num_items + 1, d]: the encoder's own vector of every item (id 0, padding, reads as zero)."""
        return self.encoder.item_vector(jnp.arange(self.num_items + 1))

    def id_term(self, batch):
        """(the ID score the fusion adds [B], whether each row's item is shown as its own [B]) of rows
        (his, uid, iid): no prompt is read."""
        _, _, known, id_score = self._id_side(batch)
        return id_score, known

    def __call__(self, batch):
        """Scores [B] for a batch of rendered prompts (or [B, slots] for a batch of packs)."""
        if "segment" in batch:
            return self.packed(batch)
        chex.assert_rank(batch["tokens"], 2)
        chex.assert_equal_shape([batch["tokens"], batch["mask"]])
        embeds = self.llm.embed(batch["tokens"])
        id_score = known = cross = None
        if "user_pos" in batch:
            user, item, id_score, known = self.collaborative_inputs(batch)
            if self.cfg.mapper.inject == "cross":  # read from item_pos, the last position, in every layer
                cross = (batch["item_pos"], jnp.concatenate([user, item], axis=1), self.mapper.cross_weights())
            elif self.cfg.mapper.inject == "last":  # item_pos is the last position: both vectors added there
                embeds = splice(embeds, (user + item).astype(embeds.dtype), batch["item_pos"], add=True)
            else:
                embeds = splice(embeds, user.astype(embeds.dtype), batch["user_pos"])
                embeds = splice(embeds, item.astype(embeds.dtype), batch["item_pos"])
        logits = self.llm(inputs_embeds=embeds, attention_mask=batch["mask"],
                          logits_at=last_positions(batch["mask"]), vocab_ids=jnp.asarray(self.answer_ids), cross=cross)
        return self.head(logits, id_score, known)

    def head(self, logits, id_score, known=None):
        """The score from the answer tokens' logits [..., 2] (and the encoder's score and the rows' known
        flags, for a fusion)."""
        score = logits[..., 0] if self.cfg.score_head == "yes_logit" else logits[..., 0] - logits[..., 1]
        return score if id_score is None else self.mapper.fuse(score, id_score.astype(score.dtype), known)

    def packed(self, batch):
        """Scores [B, slots] of a batch of packs (sasrecllm_jax.data.packing): each slot's suffix attends
        to its pack's prefix and to itself, at its own row's positions; every slot's row is scored as if
        alone. The user's soft tokens sit in the prefix, each slot's item tokens in its suffix."""
        tokens, segment = batch["tokens"], batch["segment"]
        chex.assert_equal_shape([tokens, segment, batch["positions"]])
        embeds = self.llm.embed(tokens)
        id_score = known = cross = None
        if "user_pos" in batch:
            B, S = batch["iid"].shape
            rows = {"his": jnp.repeat(batch["his"], S, axis=0), "uid": jnp.repeat(batch["uid"], S),
                    "iid": batch["iid"].reshape(-1)}
            if "collab_scale" in batch:  # [B]: a pack's rows are kept or dropped together
                rows["collab_scale"] = jnp.repeat(batch["collab_scale"], S)
            user, item, id_score, known = self.collaborative_inputs(rows)
            user, item = user.reshape(B, S, *user.shape[1:]), item.reshape(B, S, *item.shape[1:])
            if self.cfg.mapper.inject == "cross":  # each slot's item_pos (T for an empty slot) reads its own vectors
                cross = (batch["item_pos"], jnp.concatenate([user, item], axis=2), self.mapper.cross_weights())
            elif self.cfg.mapper.inject == "last":  # each slot's item_pos is its last position
                embeds = splice(embeds, (user + item).astype(embeds.dtype), batch["item_pos"], add=True)
            else:
                embeds = splice(embeds, user[:, 0].astype(embeds.dtype), batch["user_pos"])
                embeds = splice(embeds, item.astype(embeds.dtype), batch["item_pos"])
            id_score, known = id_score.reshape(B, S), known.reshape(B, S)
        T = tokens.shape[1]
        key = segment[:, None, :]
        sees = jnp.tril(jnp.ones((T, T), bool))[None] & (key >= 0) & ((key == 0) | (key == segment[:, :, None]))
        logits = self.llm(inputs_embeds=embeds, attention_mask=sees, positions=batch["positions"],
                          logits_at=batch["last"], vocab_ids=jnp.asarray(self.answer_ids), cross=cross)
        return self.head(logits, id_score, known)


def splice(embeds, vectors, start, add: bool = False):
    """Write vectors [B, k, D] into embeds [B, T, D] at rows start..start+k-1 of each batch row (or, with
    `add`, add them there); or, with start [B, S], vectors [B, S, k, D] at each of S starts. A start of T or
    more writes nothing."""
    if start.ndim == 2:
        B, S, k = vectors.shape[:3]
        chex.assert_shape(start, (B, S))
        at = embeds.at[jnp.arange(B)[:, None, None], start[:, :, None] + jnp.arange(k)[None, None]]
    else:
        B, k = vectors.shape[:2]
        chex.assert_rank([embeds, vectors], 3)
        chex.assert_shape(start, (B,))
        chex.assert_axis_dimension(embeds, 2, vectors.shape[2])
        at = embeds.at[jnp.arange(B)[:, None], start[:, None] + jnp.arange(k)[None]]
    return at.add(vectors, mode="drop") if add else at.set(vectors, mode="drop")


class EncoderScorer(_HasEncoder, nn.Module):
    """The ID encoder alone (methods `sasrec`, `mf`, `pop`): the encoder's own score. Same param names as Hybrid."""
    cfg: ModelConfig
    num_users: int
    num_items: int
    deterministic: bool = True

    def setup(self):
        self._set_encoder(make_encoder(self.cfg, self.num_users, self.num_items, self.deterministic))

    def __call__(self, batch):
        return self.encoder(batch["his"], batch["uid"], batch["iid"])
