"""A Llama decoder in Flax linen, parameters named after the Hugging Face checkpoint keys.

    llm/model/embed_tokens/embedding                  <- model.embed_tokens.weight
    llm/model/layers/self_attn/{q,k,v,o}_proj/kernel  <- model.layers.{i}.self_attn.*.weight (transposed,
    llm/model/layers/mlp/{gate,up,down}_proj/kernel      stacked over i: layers run under nn.scan)
    llm/model/layers/{input,post_attention}_layernorm/weight
    llm/model/norm/weight, llm/lm_head/kernel         <- model.norm.weight, lm_head.weight (untied only)

Rotary in the Hugging Face (rotate_half) layout. Positions come from the attention mask, so a left-
or right-padded row scores as the same row unpadded.

`cross` (model.mapper.inject: cross) adds, in every layer after self-attention, a gated cross-attention
from given positions to given vectors; its weights are inputs (the mapper's), not parameters of the decoder.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import flax.linen as nn

from sasrecllm_jax.config import LlamaConfig, LoraConfig
from sasrecllm_jax.models.lora import Linear


def rms_norm(x, w, eps: float, dtype):
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return w.astype(dtype) * y.astype(dtype)


class RMSNorm(nn.Module):
    eps: float
    dtype: str = "float32"
    param_dtype: str = "float32"
    recompute: bool = False  # remat "cheap": the backward pass recomputes the fp32 intermediates

    @nn.compact
    def __call__(self, x):
        w = self.param("weight", nn.initializers.ones, (x.shape[-1],), jnp.dtype(self.param_dtype))
        norm = jax.checkpoint(rms_norm, static_argnums=(2, 3)) if self.recompute else rms_norm
        return norm(x, w, self.eps, jnp.dtype(self.dtype))


def inv_frequencies(cfg: LlamaConfig) -> jnp.ndarray:
    inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, cfg.head_dim, 2, dtype=jnp.float32) / cfg.head_dim))
    s = cfg.rope_scaling
    if s is None:
        return inv
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = jnp.where(wavelen > low_wavelen, inv / s.factor, inv)
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(medium, smoothed, scaled)


def apply_rope(x, positions, inv_freq):
    """x: [B, T, heads, H]; positions: [B, T]. Hugging Face's rotate_half layout."""
    freqs = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, H/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(emb), jnp.sin(emb)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x.astype(jnp.float32) * cos + rotated * sin).astype(x.dtype)


def _cheap(cfg: LlamaConfig, fn, **kw):
    """remat "cheap": fn's intermediates are recomputed from its inputs in the backward pass, not saved."""
    return jax.checkpoint(fn, **kw) if cfg.remat == "cheap" else fn


def _proj(module, name: str, features: int) -> Linear:
    """A projection of a block (Attention / MLP), LoRA-adapted when its name is a target."""
    c = module.cfg
    return Linear(features, module.lora, c.dtype, c.param_dtype, module.deterministic, c.remat == "cheap",
                  c.matmul_dtype, name=name)


def attend_by_heads(q, k, v, mask, matmul_dtype=None):
    """jax.nn.dot_product_attention(q, k, v, mask=mask) (q [B, T, heads, H]; k, v [B, S, kv heads, H]; mask
    [B or 1, 1, T, S]) with the heads laid out first: [B, kv heads, group, T, H] operands make the two
    products plain batched matmuls, which XLA's CPU backend runs about twice as fast as the [B, T, heads, H]
    layout's. matmul_dtype: both products multiply in it and sum in float32; softmax stays float32."""
    B, T, N, H = q.shape
    K = k.shape[2]
    low = (lambda a: a.astype(matmul_dtype)) if matmul_dtype else (lambda a: a)
    qh = q.reshape(B, T, K, N // K, H).transpose(0, 2, 3, 1, 4)
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    logits = jnp.einsum("bkgth,bksh->bkgts", low(qh), low(kh), preferred_element_type=jnp.float32)
    logits = logits * jnp.float32(1 / math.sqrt(H))
    logits = jnp.where(mask[:, :, None], logits, jnp.float32(-0.7 * float(jnp.finfo(jnp.float32).max)))
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bksh->bkgth", low(probs), low(vh), preferred_element_type=jnp.float32)
    return out.astype(v.dtype).transpose(0, 3, 1, 2, 4).reshape(B, T, N, H)


class Attention(nn.Module):
    cfg: LlamaConfig
    lora: LoraConfig | None = None
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, positions, mask):
        c = self.cfg
        B, T, _ = x.shape
        proj = lambda n, f: _proj(self, n, f)
        q = proj("q_proj", c.num_heads * c.head_dim)(x).reshape(B, T, c.num_heads, c.head_dim)
        k = proj("k_proj", c.num_kv_heads * c.head_dim)(x).reshape(B, T, c.num_kv_heads, c.head_dim)
        v = proj("v_proj", c.num_kv_heads * c.head_dim)(x).reshape(B, T, c.num_kv_heads, c.head_dim)
        inv = inv_frequencies(c)
        rope = _cheap(c, apply_rope)
        q, k = rope(q, positions, inv), rope(k, positions, inv)
        if c.attention == "cudnn" and mask.ndim == 2:  # right-padded rows: causal + key lengths, no mask tensor
            lengths = mask.sum(-1).astype(jnp.int32)
            out = jax.nn.dot_product_attention(q, k, v, is_causal=True, query_seq_lengths=lengths,
                                               key_value_seq_lengths=lengths, implementation="cudnn")
        else:
            def attend(q, k, v, mask):  # under remat "cheap" the [B, heads, T, T] scores are recomputed
                if mask.ndim == 3:  # [B, T, T]: which keys each query sees, given whole
                    full = mask[:, None].astype(bool)
                else:
                    causal = jnp.tril(jnp.ones((T, T), bool))
                    full = causal[None, None] & mask[:, None, None, :].astype(bool)
                if jax.default_backend() == "cpu":
                    return attend_by_heads(q, k, v, full, c.matmul_dtype)
                return jax.nn.dot_product_attention(q, k, v, mask=full, implementation="xla")
            out = _cheap(c, attend)(q, k, v, mask)
        return proj("o_proj", c.hidden_size)(out.reshape(B, T, c.num_heads * c.head_dim))


class MLP(nn.Module):
    cfg: LlamaConfig
    lora: LoraConfig | None = None
    deterministic: bool = True

    @nn.compact
    def __call__(self, x):
        c = self.cfg
        proj = lambda n, f: _proj(self, n, f)
        glu = _cheap(c, lambda gate, up: nn.silu(gate) * up)  # "cheap": keeps gate and up, recomputes silu
        return proj("down_proj", c.hidden_size)(
            glu(proj("gate_proj", c.intermediate_size)(x), proj("up_proj", c.intermediate_size)(x)))


def cross_attend(h, at, memory, w: dict, eps: float):
    """h [B, T, D] plus, at positions `at` ([B], or [B, S]; T or more: none), tanh(w["gate"]) x a one-head
    attention from rms(h) there to `memory` ([B, M, D], or [B, S, M, D]: each position its own vectors):
    softmax(q k^T / sqrt(r)) v W_o with q = rms(h) W_q, k = memory W_k, v = memory W_v (rank r)."""
    B, T = h.shape[:2]
    rows = jnp.arange(B) if at.ndim == 1 else jnp.arange(B)[:, None]
    q = h[rows, jnp.minimum(at, T - 1)].astype(jnp.float32)
    q = q * jax.lax.rsqrt(jnp.mean(q * q, axis=-1, keepdims=True) + eps) @ w["q"]
    m = memory.astype(jnp.float32)
    k, v = m @ w["k"], m @ w["v"]
    p = jax.nn.softmax(jnp.einsum("...r,...mr->...m", q, k) / math.sqrt(q.shape[-1]), axis=-1)
    out = jnp.tanh(w["gate"]) * (jnp.einsum("...m,...mr->...r", p, v) @ w["o"])
    return h.at[rows, at].add(out.astype(h.dtype), mode="drop")


class DecoderLayer(nn.Module):
    cfg: LlamaConfig
    lora: LoraConfig | None = None
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, positions, mask, cross_at=None, cross_w=None):
        """cross_at: (positions [B] or [B, S], memory) and cross_w this layer's weights (cross_attend), or None."""
        c = self.cfg
        norm = lambda n: RMSNorm(c.rms_norm_eps, c.dtype, c.param_dtype, c.remat == "cheap", name=n)
        h = x + Attention(c, self.lora, self.deterministic, name="self_attn")(norm("input_layernorm")(x), positions, mask)
        if cross_w is not None:
            h = cross_attend(h, *cross_at, cross_w, c.rms_norm_eps)
        out = h + MLP(c, self.lora, self.deterministic, name="mlp")(norm("post_attention_layernorm")(h))
        return out, None


def slices_weights_as_bits(cfg: LlamaConfig, deterministic: bool) -> bool:
    """Whether the layer loop takes its bf16/fp16 weights as uint16 bits (weights_as_bits): on the CPU, in
    a model that scores (deterministic). A train step's backward pass needs each layer's weights again, and
    the loop would save the ones taken from bits per layer, a stacked bf16 buffer that XLA's CPU backend
    converts whole on every layer; the loop's own bf16 slices it takes again without saving them."""
    return deterministic and cfg.param_dtype in ("bfloat16", "float16") and jax.default_backend() == "cpu"


def weights_as_bits(tree, low, back: bool = False):
    """The `low`-dtype (bf16/fp16) leaves of a param tree as uint16 arrays of the same bits (back: the
    inverse), others as they are. XLA's CPU backend cannot slice a bf16 array as it is: the layer loop's
    slice of a stacked bf16 weight becomes a float32 copy of every layer's weight, made on every call
    and converted back per layer; a uint16 slice is a plain copy. No gradient flows into bits: only the
    base weights take this form (the partition's frozen group, which never trains), never a `lora` leaf."""
    src, dst = (jnp.uint16, low) if back else (low, jnp.uint16)
    return jax.tree_util.tree_map_with_path(  # adapters train: whatever their dtype, they stay as they are
        lambda path, x: jax.lax.bitcast_convert_type(x, dst)
        if x.dtype == src and "lora" not in jax.tree_util.keystr(path) else x, tree)


REMAT_POLICIES = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


class LlamaModel(nn.Module):
    cfg: LlamaConfig
    lora: LoraConfig | None = None
    deterministic: bool = True

    def setup(self):
        c = self.cfg
        self.embed_tokens = nn.Embed(c.vocab_size, c.hidden_size, dtype=jnp.dtype(c.dtype),
                                     param_dtype=jnp.dtype(c.param_dtype),
                                     embedding_init=nn.initializers.normal(0.02))
        layer = DecoderLayer
        if c.remat not in ("none", "cheap"):
            layer = nn.remat(layer, prevent_cse=False, policy=REMAT_POLICIES[c.remat])
        low = jnp.dtype(c.param_dtype)
        bits = slices_weights_as_bits(c, self.deterministic)
        if bits:  # the loop slices its layer's weights as uint16 bits (see weights_as_bits)
            layer = nn.map_variables(layer, "params", trans_in_fn=lambda t: weights_as_bits(t, low, back=True),
                                     trans_out_fn=lambda t: weights_as_bits(t, low), init=True)
        layers = nn.scan(layer, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                         in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, 0), length=c.num_layers,
                         unroll=c.scan_unroll)
        if bits:
            layers = nn.map_variables(layers, "params", trans_in_fn=lambda t: weights_as_bits(t, low),
                                      trans_out_fn=lambda t: weights_as_bits(t, low, back=True), init=True)
        self.layers = layers(c, self.lora, self.deterministic)
        self.norm = RMSNorm(c.rms_norm_eps, c.dtype, c.param_dtype)

    def embed(self, input_ids):
        return self.embed_tokens(input_ids)

    def head_matrix(self):
        """[vocab, hidden]: the tied output head."""
        return self.embed_tokens.embedding

    def __call__(self, x, positions, mask, cross=None):
        """cross: (positions, memory, weights {q, k, v, o, gate} stacked over the layers) or None."""
        at, w = (cross[:2], cross[2]) if cross is not None else (None, None)
        x, _ = self.layers(x.astype(self.cfg.dtype), positions, mask, at, w)
        return self.norm(x)


class LlamaForCausalLM(nn.Module):
    cfg: LlamaConfig
    lora: LoraConfig | None = None
    deterministic: bool = True

    def setup(self):
        self.model = LlamaModel(self.cfg, self.lora, self.deterministic)
        if not self.cfg.tie_word_embeddings:
            self.lm_head = OutputHead(self.cfg.hidden_size, self.cfg.vocab_size, self.cfg.param_dtype)

    def embed(self, input_ids):
        return self.model.embed(input_ids)

    def __call__(self, input_ids=None, *, inputs_embeds=None, attention_mask=None, positions=None,
                 logits_at=None, vocab_ids=None, cross=None):
        """Logits [B, T or P, V or len(vocab_ids)].

        attention_mask [B, T] (1 = token; attention is causal) or [B, T, T] (True where query t may
        attend to key s, causality included: packed sequences); positions default to cumsum(mask) - 1,
        so padding on either side leaves a row's numbers unchanged (a [B, T, T] mask needs them given).
        logits_at [B] or [B, P] picks the positions whose logits are computed; vocab_ids [V'] restricts
        the output head to those tokens; `cross` (positions, memory, stacked weights) adds the gated
        cross-attention of cross_attend in every layer.
        """
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        B, T = x.shape[:2]
        mask = jnp.ones((B, T), jnp.int32) if attention_mask is None else attention_mask
        if mask.ndim == 3:
            if positions is None:
                raise ValueError("a [B, T, T] attention_mask needs the tokens' positions")
        else:
            mask = mask.astype(jnp.int32)
        if positions is None:
            positions = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
        h = self.model(x, positions, mask, cross)
        if logits_at is not None:
            at = logits_at if logits_at.ndim == 2 else logits_at[:, None]
            h = jnp.take_along_axis(h, at[:, :, None], axis=1)
            if logits_at.ndim == 1:
                h = h[:, 0]
        w = self.model.head_matrix() if self.cfg.tie_word_embeddings else self.lm_head.kernel_t()
        if vocab_ids is not None:
            w = w[jnp.asarray(vocab_ids)]
        return jnp.einsum("...d,vd->...v", h.astype(jnp.float32), w.astype(jnp.float32))


class OutputHead(nn.Module):
    """lm_head: kernel [hidden, vocab] (Hugging Face `lm_head.weight` transposed)."""
    hidden_size: int
    vocab_size: int
    param_dtype: str = "float32"

    def setup(self):
        self.kernel = self.param("kernel", nn.initializers.normal(0.02), (self.hidden_size, self.vocab_size),
                                 jnp.dtype(self.param_dtype))

    def kernel_t(self):
        return self.kernel.T


def last_positions(mask):
    """Index of the last real token of each row (works for left and right padding)."""
    T = mask.shape[-1]
    return jnp.max(jnp.where(mask.astype(bool), jnp.arange(T), -1), axis=-1)
