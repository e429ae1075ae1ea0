"""SmolLM2-135M-Instruct from its GGUF (the real pretrained model here) against transformers' GGUF load."""
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from sasrecllm_jax.config import SMOLLM2_135M
from sasrecllm_jax.models.llama import LlamaForCausalLM
from sasrecllm_jax.weights.gguf import load_gguf, unpermute
from sasrecllm_jax.weights.tokenizer import answer_token, load_tokenizer

PROMPTS = ["The capital of France is",
           'A user liked "Toy Story (1995)", "Heat (1995)". Will they enjoy "Casino (1995)"? Answer:',
           "def fibonacci(n):"]


def test_unpermute_inverts_llama_cpp_permutation():
    n, rows, cols = 3, 12, 5
    w = np.arange(rows * cols, dtype=np.float32).reshape(rows, cols)
    permuted = w.reshape(n, 2, rows // n // 2, cols).swapaxes(1, 2).reshape(rows, cols)  # llama.cpp's convert
    np.testing.assert_array_equal(unpermute(permuted, n), w)


def test_smollm2_gguf_matches_transformers(smollm2_gguf, tmp_path):
    cfg, params = load_gguf(smollm2_gguf)
    import dataclasses
    assert cfg == dataclasses.replace(SMOLLM2_135M, max_position_embeddings=cfg.max_position_embeddings)
    tok = load_tokenizer(smollm2_gguf, cache=tmp_path)
    assert (answer_token(tok, " Yes"), answer_token(tok, " No"), answer_token(tok, "Yes")) == (9230, 2838, 10539)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name,
                                                           dtype=torch.float32).eval()
    model = LlamaForCausalLM(cfg)
    for prompt in PROMPTS:
        ids = tok.encode(prompt).ids
        with torch.no_grad():
            ref = hf(torch.tensor([ids])).logits[0, -1].numpy()
        ours = np.asarray(model.apply({"params": params}, jnp.asarray([ids]), logits_at=jnp.array([len(ids) - 1])))[0]
        diff = np.abs(ours - ref).max()
        print(f"{prompt[:30]!r}: max |logit diff| = {diff:.2e}")
        assert diff < 1e-3
        assert list(np.argsort(-ours)[:5]) == list(np.argsort(-ref)[:5])


def test_gguf_tokenizer_matches_transformers(smollm2_gguf, tmp_path):
    """Our torch-free GGUF tokenizer equals transformers' conversion of the same file, token for token."""
    from sasrecllm_jax.weights.tokenizer import tokenizer_from_gguf
    ours = tokenizer_from_gguf(smollm2_gguf)
    theirs = transformers.AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)
    texts = PROMPTS + ["<|im_start|>user\nHi 12345 ça va? 日本語\t  spaces  <|im_end|>", " Yes", "Yes", " No",
                       'A user liked "Amélie (2001)", "8½ (1963)".\nAnswer:']
    for text in texts:
        assert ours.encode(text).ids == theirs(text)["input_ids"], text
        assert ours.decode(ours.encode(text).ids, skip_special_tokens=False) == theirs.decode(theirs(text)["input_ids"])
    assert ours.get_vocab_size() == theirs.vocab_size == 49152
