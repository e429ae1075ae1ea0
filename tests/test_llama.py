"""Flax Llama vs transformers' PyTorch LlamaForCausalLM on the same random weights (fp32, CPU)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sasrecllm_jax.config import SMOLLM2_135M, TINYLLAMA_1_1B, LoraConfig, RopeScaling
from sasrecllm_jax.errors import WeightsError
from sasrecllm_jax.models.llama import LlamaForCausalLM, last_positions
from sasrecllm_jax.weights.hf_folder import load_hf_folder


def write_random_hf(tmp_path, *, kv_heads, tie, rope_scaling=None, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=kv_heads, head_dim=16,
                                   rms_norm_eps=1e-5, max_position_embeddings=256, tie_word_embeddings=tie,
                                   rope_theta=10000.0, rope_scaling=rope_scaling)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # HF initialises norms to 1: randomise them so the test sees them
        for n, p in model.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(tmp_path, safe_serialization=True)
    return model


def count_params(tree) -> int:
    return int(sum(x.size for x in jax.tree_util.tree_leaves(tree)))


CASES = {
    "gqa_untied": dict(kv_heads=2, tie=False),
    "mha_tied": dict(kv_heads=4, tie=True),
    "gqa_tied_llama3_rope": dict(kv_heads=2, tie=True, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}),
}


@pytest.mark.parametrize("case", CASES)
def test_parity_with_transformers(tmp_path, case):
    hf = write_random_hf(tmp_path, **CASES[case])
    cfg, params = load_hf_folder(tmp_path)
    if CASES[case].get("rope_scaling"):
        assert cfg.rope_scaling == RopeScaling(8.0, 1.0, 4.0, 64)
    model = LlamaForCausalLM(cfg)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 128, (3, 40))
    lengths = np.array([40, 25, 9])
    with torch.no_grad():
        ref = [hf(torch.tensor(ids[i:i + 1, :n])).logits[0].numpy() for i, n in enumerate(lengths)]
    # right padding, left padding and no padding must all give the unpadded row's logits
    right_mask = (np.arange(40)[None] < lengths[:, None]).astype(np.int32)
    left_ids = np.stack([np.r_[np.zeros(40 - n, int), ids[i, :n]] for i, n in enumerate(lengths)])
    left_mask = right_mask[:, ::-1].copy()
    right = np.asarray(model.apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(right_mask)))
    left = np.asarray(model.apply({"params": params}, jnp.asarray(left_ids), attention_mask=jnp.asarray(left_mask)))
    worst = 0.0
    for i, n in enumerate(lengths):
        worst = max(worst, np.abs(right[i, :n] - ref[i]).max(), np.abs(left[i, 40 - n:] - ref[i]).max())
    print(f"{case}: max |logit diff| vs transformers = {worst:.2e}")
    assert worst < 1e-4
    # logits only at the asked positions, restricted to a vocab subset, equal the full computation
    last = last_positions(jnp.asarray(left_mask))
    sub = model.apply({"params": params}, jnp.asarray(left_ids), attention_mask=jnp.asarray(left_mask),
                      logits_at=last, vocab_ids=jnp.array([5, 7]))
    np.testing.assert_allclose(np.asarray(sub), left[:, -1][:, [5, 7]], atol=1e-5)


def test_loading_refuses_mismatch(tmp_path):
    write_random_hf(tmp_path, kv_heads=2, tie=False)
    import json
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["intermediate_size"] = 100
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match=r"mlp.gate_proj.weight has shape \(96, 64\), the config implies \(100, 64\)"):
        load_hf_folder(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="cannot be read"):
        load_hf_folder(tmp_path)


def _abstract(cfg, lora=None):
    model = LlamaForCausalLM(cfg, lora)
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]


def test_preset_parameter_counts():
    assert count_params(_abstract(TINYLLAMA_1_1B)) == 1_100_048_384
    assert count_params(_abstract(SMOLLM2_135M)) == 134_515_008
    tree = _abstract(TINYLLAMA_1_1B, LoraConfig())
    layers = tree["model"]["layers"]["self_attn"]
    assert layers["q_proj"]["lora"]["a"].shape == (22, 2048, 8) and layers["q_proj"]["lora"]["b"].shape == (22, 8, 2048)
    assert layers["v_proj"]["lora"]["b"].shape == (22, 8, 256) and "lora" not in layers["k_proj"]
    assert count_params(tree) - 1_100_048_384 == 1_126_400


def test_hub_download_offline_is_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from sasrecllm_jax.weights import hub
    with pytest.raises(WeightsError, match=r"(?s)cannot download TinyLlama/TinyLlama-1.1B-Chat-v1.0 .* Offline\?"):
        hub.download(out=tmp_path / "tl")
