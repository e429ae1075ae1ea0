"""bf16 projections on the CPU: one dot that multiplies bf16 values as they are and sums in float32
(sasrecllm_jax.models.lora.low_precision_matmul with bf16 x), forward and backward, in place of XLA's
convert-to-float32 dot: the same values, float rounding aside, and the form every Linear takes on the CPU in bf16."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sasrecllm_jax.config import LoraConfig
from sasrecllm_jax.models.lora import Linear, low_precision_matmul


def operands():
    kx, kk = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (3, 17, 48), jnp.float32).astype(jnp.bfloat16)
    k = (jax.random.normal(kk, (48, 40), jnp.float32) * 0.2).astype(jnp.bfloat16)
    return x, k


def test_values_and_gradients_are_the_float32_ones_rounded():
    x, k = operands()
    x32, k32 = x.astype(jnp.float32), k.astype(jnp.float32)
    got = low_precision_matmul(x, k)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray((x32 @ k32).astype(jnp.bfloat16), np.float32),
                               rtol=1e-2, atol=1e-2)
    w = jax.random.normal(jax.random.key(2), got.shape, jnp.float32)  # a loss that weighs every output
    loss = lambda f: lambda a, b: jnp.sum(f(a, b).astype(jnp.float32) * w)
    dx, dk = jax.grad(loss(low_precision_matmul), argnums=(0, 1))(x, k)
    rx, rk = jax.grad(loss(lambda a, b: a @ b), argnums=(0, 1))(x32, k32)
    assert dx.dtype == dk.dtype == jnp.bfloat16
    for a, b in ((dx, rx), (dk, rk)):
        scale = float(jnp.abs(b).max())
        np.testing.assert_allclose(np.asarray(a, np.float32) / scale, np.asarray(b) / scale, atol=1e-2)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the form is the CPU's; other backends keep x @ kernel")
def test_a_bf16_linear_on_the_cpu_takes_that_form():
    x, _ = operands()
    for dtype, expect in (("bfloat16", True), ("float32", False)):
        layer = Linear(40, LoraConfig(rank=4, targets=("q_proj",)), dtype=dtype, param_dtype=dtype, name="q_proj")
        params = layer.init(jax.random.key(1), x)
        jaxpr = str(jax.make_jaxpr(lambda p: layer.apply(p, x))(params))
        assert ("custom_vjp_call" in jaxpr) is expect, dtype
        kernel = params["params"]["kernel"]  # LoRA's b starts at zero: the output is the projection alone
        want = x.astype(jnp.float32) @ kernel.astype(jnp.float32)
        np.testing.assert_allclose(np.asarray(layer.apply(params, x), np.float32), np.asarray(want), rtol=2e-2, atol=2e-2)
