"""Hand-written LoRA: a `lora: {a, b}` subtree beside each targeted kernel.

    y = x @ kernel + dropout(x) @ a @ b * (alpha / rank),   a: [in, r], b: [r, out], b = 0 at init

so step 0 equals the base model exactly. LoRA parameters are kept in float32 whatever the base dtype.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from sasrecllm_jax.config import LoraConfig
from sasrecllm_jax.trees import set_path


def lora_a_init(key, shape, dtype=jnp.float32):
    """PEFT's kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)); works on stacked [L, in, r]."""
    bound = 1.0 / jnp.sqrt(shape[-2])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def threefry2x32(k1, k2, x1, x2):
    """jax's Threefry-2x32 hash (jax/_src/random/threefry2x32.py), written out round by round.

    The same bits as `jax.random.bits`; jax lowers it on CPU as a 5-trip loop whose every trip reads
    and writes whole arrays, while these plain element-wise ops fuse into one pass over the array."""
    rotations = ((13, 15, 26, 6), (17, 29, 16, 24))
    ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
    x0, x1 = x1 + ks[0], x2 + ks[1]
    for i in range(5):
        for r in rotations[i % 2]:
            x0 = x0 + x1
            x1 = (x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r))
            x1 = x0 ^ x1
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


def bernoulli_threefry(key, p: float, shape) -> jax.Array:
    """`jax.random.bernoulli(key, p, shape)` bit for bit (threefry keys, jax_threefry_partitionable),
    as one fusible element-wise expression."""
    k1, k2 = key[0], key[1]
    n = int(np.prod(shape))
    if n >= 2**32:
        raise ValueError(f"dropout over {n} elements: the fused mask covers fewer than 2**32")
    counts = jax.lax.iota(jnp.uint32, n).reshape(shape)  # iota_2x32_shape: high words are 0 below 2**32
    b1, b2 = threefry2x32(k1, k2, jnp.zeros_like(counts), counts)
    bits = b1 ^ b2
    # jax.random.uniform's float from the top 23 bits, in [0, 1)
    floats = jax.lax.bitcast_convert_type((bits >> np.uint32(9)) | np.uint32(0x3F800000), jnp.float32) - np.float32(1.0)
    return floats < np.float32(p)


def fused_dropout_ok(rng) -> bool:
    """The fused mask reproduces jax.random.bernoulli for threefry keys under partitionable bits (the default)."""
    if not jax.config.jax_threefry_partitionable:
        return False
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return jax.random.key_impl(rng) == jax.random.key_impl(jax.random.key(0)) and \
            "threefry" in str(jax.random.key_impl(rng))
    return rng.shape == (2,) and rng.dtype == jnp.uint32 and jax.config.jax_default_prng_impl == "threefry2x32"


class Dropout(nn.Module):
    """flax.linen.Dropout with the mask drawn by `bernoulli_threefry`: the same rng (make_rng under the same
    module name), the same mask, the same output; one fused pass instead of jax's rolled loop on CPU."""
    rate: float
    deterministic: bool = True

    @nn.compact
    def __call__(self, x):
        if self.rate == 0.0 or self.deterministic:
            return x
        rng = self.make_rng("dropout")
        keep_prob = 1.0 - self.rate
        if fused_dropout_ok(rng):
            data = jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng
            keep = bernoulli_threefry(data, keep_prob, x.shape)
        else:  # what nn.Dropout does
            keep = jax.random.bernoulli(rng, p=keep_prob, shape=x.shape)
        return jax.lax.select(keep, x / keep_prob, jnp.zeros_like(x))


class LoRA(nn.Module):
    features: int
    cfg: LoraConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x):
        a = self.param("a", lora_a_init, (x.shape[-1], self.cfg.rank), jnp.float32)
        b = self.param("b", nn.initializers.zeros, (self.cfg.rank, self.features), jnp.float32)
        x = Dropout(self.cfg.dropout, self.deterministic, name="Dropout_0")(x)  # nn.Dropout's name: same rng
        return (x @ a.astype(x.dtype)) @ b.astype(x.dtype) * jnp.asarray(self.cfg.scale, x.dtype)


RematLoRA = nn.remat(LoRA)  # same parameter names, same dropout stream; recomputed in the backward pass


class Linear(nn.Module):
    """A bias-free projection named like its Hugging Face module (`q_proj`...), optionally LoRA-adapted."""
    features: int
    lora: LoraConfig | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    deterministic: bool = True
    recompute: bool = False  # remat "cheap": the backward pass redraws the dropout mask and x @ a

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.normal(0.02), (x.shape[-1], self.features),
                            jnp.dtype(self.param_dtype))
        x = x.astype(self.dtype)
        y = x @ kernel.astype(self.dtype)
        if self.lora is not None and self.name in self.lora.targets:
            adapter = RematLoRA if self.recompute else LoRA
            y = y + adapter(self.features, self.lora, self.deterministic, name="lora")(x)
        return y


def init_adapters(abstract, key, cfg: LoraConfig):
    """Fresh adapter values for every `lora` subtree of an abstract (ShapeDtypeStruct) param tree."""
    leaves = []

    def walk(node, path):
        if isinstance(node, dict):
            if set(node) == {"a", "b"} and path and path[-1] == "lora":
                leaves.append(path)
            for k, v in node.items():
                walk(v, path + (k,))
    walk(abstract, ())
    out = {}
    for i, path in enumerate(leaves):
        node = abstract
        for p in path:
            node = node[p]
        a = lora_a_init(jax.random.fold_in(key, i), node["a"].shape)
        b = jnp.zeros(node["b"].shape, jnp.float32)
        set_path(out, path, {"a": a, "b": b})
    return out
