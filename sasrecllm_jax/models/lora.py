"""Hand-written LoRA: a `lora: {a, b}` subtree beside each targeted kernel.

    y = x @ kernel + dropout(x) @ a @ b * (alpha / rank),   a: [in, r], b: [r, out], b = 0 at init

so step 0 equals the base model exactly. LoRA parameters are kept in float32 whatever the base dtype.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from sasrecllm_jax.config import LoraConfig
from sasrecllm_jax.models.dropout import Dropout
from sasrecllm_jax.trees import set_path


def lora_a_init(key, shape, dtype=jnp.float32):
    """PEFT's kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)); works on stacked [L, in, r]."""
    bound = 1.0 / jnp.sqrt(shape[-2])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


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


@jax.custom_vjp
def low_precision_matmul(x, kernel):
    """x @ kernel with x rounded to kernel's (low-precision) dtype, one dot that multiplies the operands
    as they are and sums in float32, returned in x's dtype: what a GPU's bf16 matmul computes. XLA's CPU
    backend computes a bf16 dot by converting both sides to float32 first; this form reaches the CPU's
    native bf16 dot (AVX-512 BF16, AMX), in the backward pass too. With float32 x (matmul_dtype) the
    backward pass keeps x as it was (a float32 stacked by the layer loop, which XLA's CPU backend writes
    in place; a bf16 one it converts whole on every layer) and multiplies the rounded cotangent by the
    kernel the same way."""
    return jnp.matmul(x.astype(kernel.dtype), kernel, preferred_element_type=jnp.float32).astype(x.dtype)


def _low_fwd(x, kernel):
    return low_precision_matmul(x, kernel), (x, kernel)


def _low_bwd(saved, g):
    x, kernel = saved
    low = kernel.dtype
    dx = jnp.matmul(g.astype(low), kernel.T, preferred_element_type=jnp.float32).astype(x.dtype)
    # unused for a frozen kernel: XLA drops it
    dk = jnp.einsum("...i,...o->io", x.astype(low), g.astype(low), preferred_element_type=jnp.float32)
    return dx, dk.astype(kernel.dtype)


low_precision_matmul.defvjp(_low_fwd, _low_bwd)


def project(x, kernel, matmul_dtype: str | None = None):
    """x @ kernel through low_precision_matmul when its operands are lower than x's dtype (matmul_dtype),
    or on the CPU when x itself is bf16/fp16."""
    low = jnp.dtype(matmul_dtype or x.dtype)
    if low != x.dtype or (low in (jnp.bfloat16, jnp.float16) and jax.default_backend() == "cpu"):
        return low_precision_matmul(x, kernel.astype(low))
    return x @ kernel.astype(x.dtype)


class Linear(nn.Module):
    """A bias-free projection named like its Hugging Face module (`q_proj`...), optionally LoRA-adapted."""
    features: int
    lora: LoraConfig | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    deterministic: bool = True
    recompute: bool = False  # remat "cheap": the backward pass redraws the dropout mask and x @ a
    matmul_dtype: str | None = None  # LlamaConfig.matmul_dtype

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.normal(0.02), (x.shape[-1], self.features),
                            jnp.dtype(self.param_dtype))
        x = x.astype(self.dtype)
        y = project(x, kernel, self.matmul_dtype)
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
