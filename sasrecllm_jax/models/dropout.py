"""Dropout whose mask is one fused element-wise pass: bit for bit flax.linen.Dropout's (for a block of a
larger array, `whole=`: that array's mask, cut to the block).

jax draws `bernoulli` masks with Threefry, which it lowers on CPU as a 5-trip loop that reads and
writes the whole array every trip; written out round by round, the same hash fuses into the op that
uses the mask. The LoRA adapters and SASRec use it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn


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
    module name), the same mask, the same output; one fused pass instead of jax's rolled loop on CPU.
    Called like nn.Dropout: `deterministic` as an attribute or at the call (the call wins)."""
    rate: float
    deterministic: bool | None = None

    @nn.compact
    def __call__(self, x, deterministic: bool | None = None, *, whole: tuple[int, ...] | None = None):
        """With `whole` (a shape), x is the trailing block of an array of that shape (its last x.shape[i]
        entries along each axis) and gets the mask entries that dropout of the whole array gives them."""
        det = self.deterministic if deterministic is None else deterministic
        if det is None:
            raise ValueError("Dropout needs `deterministic`, as an attribute or at the call")
        shape = x.shape if whole is None else tuple(whole)
        if len(shape) != x.ndim or any(n > w for n, w in zip(x.shape, shape)):
            raise ValueError(f"dropout of a {x.shape} block of a {shape} array: not a trailing block")
        if self.rate == 0.0 or det:
            return x
        rng = self.make_rng("dropout")
        keep_prob = 1.0 - self.rate
        if fused_dropout_ok(rng):
            data = jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng
            keep = bernoulli_threefry(data, keep_prob, shape)
        else:  # what nn.Dropout does
            keep = jax.random.bernoulli(rng, p=keep_prob, shape=shape)
        keep = keep[tuple(slice(w - n, None) for n, w in zip(x.shape, shape))]  # fused: only the block is drawn
        return jax.lax.select(keep, x / keep_prob, jnp.zeros_like(x))
