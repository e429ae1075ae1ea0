"""matmul_dtype: the projections multiply bf16 operands and sum in float32 while every other value stays
float32 (sasrecllm_jax.models.lora.low_precision_matmul), forward and backward; the config refuses
values it cannot mean."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sasrecllm_jax.config import DEBUG_TINY, LoraConfig, ModelConfig, llm_config
from sasrecllm_jax.errors import ConfigError
from sasrecllm_jax.models.llama import LlamaForCausalLM
from sasrecllm_jax.models.lora import Linear, low_precision_matmul

rounded = lambda a: np.asarray(jnp.asarray(a).astype(jnp.bfloat16).astype(jnp.float32), np.float64)


def operands():
    kx, kk, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (3, 17, 48), jnp.float32)
    k = (jax.random.normal(kk, (48, 40), jnp.float32) * 0.2).astype(jnp.bfloat16)
    g = jax.random.normal(kg, (3, 17, 40), jnp.float32)
    return x, k, g


def test_values_are_the_rounded_operands_products_in_float32():
    x, k, _ = operands()
    got = low_precision_matmul(x, k)
    assert got.dtype == jnp.float32
    want = rounded(x) @ np.asarray(k, np.float64)  # bf16 x bf16 products are exact; only the sums round
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=0, atol=1e-5 * np.abs(want).max())
    # not the float32 product: x is rounded to bf16 before it is multiplied
    assert np.abs(np.asarray(x, np.float64) @ np.asarray(k, np.float64) - want).max() > 1e-3


def test_gradients_multiply_the_rounded_cotangent_the_same_way():
    x, k, g = operands()
    _, vjp = jax.vjp(low_precision_matmul, x, k)
    dx, dk = vjp(g)
    assert dx.dtype == jnp.float32 and dk.dtype == jnp.bfloat16
    want_dx = rounded(g) @ np.asarray(k, np.float64).T
    want_dk = np.einsum("bti,bto->io", rounded(x), rounded(g))
    np.testing.assert_allclose(np.asarray(dx, np.float64), want_dx, rtol=0, atol=1e-5 * np.abs(want_dx).max())
    np.testing.assert_allclose(np.asarray(dk, np.float64), want_dk, rtol=0, atol=1e-2 * np.abs(want_dk).max())


def test_a_linear_with_matmul_dtype_takes_that_form_and_keeps_float32_activations():
    x, _, _ = operands()
    for matmul_dtype, expect in (("bfloat16", True), (None, False)):
        layer = Linear(40, LoraConfig(rank=4, targets=("q_proj",)), dtype="float32", param_dtype="bfloat16",
                       matmul_dtype=matmul_dtype, name="q_proj")
        params = layer.init(jax.random.key(1), x)
        assert params["params"]["kernel"].dtype == jnp.bfloat16
        assert params["params"]["lora"]["a"].dtype == jnp.float32
        jaxpr = str(jax.make_jaxpr(lambda p: layer.apply(p, x))(params))
        assert ("custom_vjp_call" in jaxpr) is expect, matmul_dtype
        out = layer.apply(params, x)  # LoRA's b starts at zero: the output is the projection alone
        assert out.dtype == jnp.float32
        kernel = np.asarray(params["params"]["kernel"], np.float64)
        want = (rounded(x) if expect else np.asarray(x, np.float64)) @ kernel
        np.testing.assert_allclose(np.asarray(out, np.float64), want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_the_model_stays_close_to_float32_and_trains_its_adapters():
    lora = LoraConfig(rank=4, dropout=0.0)
    ids = jax.random.randint(jax.random.key(3), (2, 10), 0, DEBUG_TINY.vocab_size)
    base = LlamaForCausalLM(DEBUG_TINY, lora)
    params = base.init(jax.random.key(0), ids)["params"]
    params = jax.tree_util.tree_map_with_path(lambda p, x: x + 0.05 if "'b'" in str(p) else x, params)
    cfg = dataclasses.replace(DEBUG_TINY, param_dtype="bfloat16", matmul_dtype="bfloat16")
    mixed = LlamaForCausalLM(cfg, lora)
    cast = jax.tree_util.tree_map_with_path(lambda p, x: x if "lora" in str(p) else x.astype(jnp.bfloat16), params)
    at = jnp.array([9, 9])
    loss = lambda m, p: jnp.sum(m.apply({"params": p}, ids, logits_at=at) ** 2)
    l32, g32 = jax.value_and_grad(lambda p: loss(base, p))(params)
    l16, g16 = jax.value_and_grad(lambda p: loss(mixed, p))(cast)
    assert abs(float(l16) / float(l32) - 1) < 0.02
    for path in (("q_proj", "lora", "a"), ("v_proj", "lora", "b")):
        a = g16["model"]["layers"]["self_attn"][path[0]][path[1]][path[2]]
        b = g32["model"]["layers"]["self_attn"][path[0]][path[1]][path[2]]
        assert a.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=0.05 * float(jnp.abs(b).max()))


@pytest.mark.parametrize("overrides, message", [
    ({"matmul_dtype": "bf16"}, "matmul_dtype = 'bf16'; use one of"),
    ({"dtype": "fp32"}, "dtype = 'fp32'; use one of"),
    ({"dtype": "bfloat16", "matmul_dtype": "float32"}, "use dtype: float32, or matmul_dtype: null"),
    ({"attention": "cudnn", "matmul_dtype": "bfloat16"}, "add model.llm_overrides.dtype=bfloat16"),
])
def test_the_config_refuses_what_it_cannot_mean(overrides, message):
    with pytest.raises(ConfigError, match=message):
        llm_config(ModelConfig(llm="DEBUG_TINY", llm_overrides=overrides))
    cfg = llm_config(ModelConfig(llm="DEBUG_TINY", llm_overrides={"matmul_dtype": "bfloat16"}))
    assert (cfg.dtype, cfg.matmul_dtype) == ("float32", "bfloat16")


def test_the_layer_loop_takes_bf16_weights_as_bits_with_the_same_params_and_numbers(monkeypatch):
    """On the CPU a scoring model's layer loop slices bf16 weights as uint16 bits (XLA's CPU backend would otherwise
    convert every layer's weights to float32 on every call): the param tree is the same, names and dtypes,
    the loss bit for bit, and the adapters' gradients up to float rounding."""
    from sasrecllm_jax.models import llama
    lora = LoraConfig(rank=4, dropout=0.0)
    ids = jax.random.randint(jax.random.key(3), (2, 10), 0, DEBUG_TINY.vocab_size)
    cfg = dataclasses.replace(DEBUG_TINY, param_dtype="bfloat16", matmul_dtype="bfloat16")
    real = llama.slices_weights_as_bits
    assert real(cfg, True) is (jax.default_backend() == "cpu") and not real(cfg, False) and not real(DEBUG_TINY, True)
    at = jnp.array([9, 9])

    def run(bits):
        monkeypatch.setattr(llama, "slices_weights_as_bits", lambda c, d: bits)
        model = LlamaForCausalLM(cfg, lora)
        params = model.init(jax.random.key(0), ids)["params"]
        params = jax.tree_util.tree_map_with_path(lambda p, x: x + 0.05 if "'b'" in str(p) else x, params)
        loss = lambda p: jnp.sum(model.apply({"params": p}, ids, logits_at=at) ** 2)
        jaxpr = str(jax.make_jaxpr(loss)(params))
        return params, jax.value_and_grad(loss)(params), "bitcast_convert_type" in jaxpr
    p1, (l1, g1), used1 = run(True)
    p0, (l0, g0), used0 = run(False)
    assert used1 and not used0
    assert jax.tree_util.tree_structure(p1) == jax.tree_util.tree_structure(p0)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a, np.float32),
                                                                      np.asarray(b, np.float32)), p1, p0)
    assert p1["model"]["layers"]["mlp"]["up_proj"]["kernel"].dtype == jnp.bfloat16
    assert float(l1) == float(l0)
    adapters = lambda g: {k: v["lora"] for k, v in g["model"]["layers"]["self_attn"].items() if "lora" in v}
    assert set(adapters(g1)) == {"q_proj", "v_proj"}
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(np.abs(b).max()))
    jax.tree_util.tree_map(close, adapters(g1), adapters(g0))  # the backward pass fuses differently
    # the base weights never train (the frozen group): no gradient reaches them through their bits
    assert not np.any(np.asarray(g1["model"]["layers"]["mlp"]["up_proj"]["kernel"], np.float32))
    # an adapter in the weights' dtype is left as it is, so it still trains
    monkeypatch.setattr(llama, "slices_weights_as_bits", lambda c, d: True)
    low = jax.tree_util.tree_map_with_path(lambda p, x: x.astype(jnp.bfloat16) if "lora" in str(p) else x, p1)
    g16 = jax.grad(lambda p: jnp.sum(LlamaForCausalLM(cfg, lora).apply({"params": p}, ids, logits_at=at) ** 2))(low)
    assert np.abs(np.asarray(g16["model"]["layers"]["self_attn"]["q_proj"]["lora"]["a"], np.float32)).max() > 0
