"""Interop with Hugging Face: the backbone as a transformers folder, the LoRA as a PEFT adapter (both ways),
the export CLI on a finished run, and the ranking metrics. CPU, float32."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import ONE_SHAPE, readme_code, smoke_config, synthetic_dataset

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from sasrecllm_jax.config import DEBUG_TINY, LoraConfig, RopeScaling
from sasrecllm_jax.data.prompts import byte_tokenizer
from sasrecllm_jax.models.llama import LlamaForCausalLM
from sasrecllm_jax.errors import WeightsError
from sasrecllm_jax.weights.hf_export import params_to_hf, write_hf_folder
from sasrecllm_jax.weights.hf_folder import load_hf_folder
from sasrecllm_jax.weights.peft_adapter import PROJECTIONS, load_peft_lora, read_peft_adapter, write_peft_adapter
from sasrecllm_jax.weights.tokenizer import answer_token

ALL = tuple(PROJECTIONS)
TINY_LORA = LoraConfig(rank=4, alpha=8.0, dropout=0.0, targets=ALL)
TINY_PROMPTS = ['A user liked "Film 1 (1991)", "Film 4 (1994)". Will the user enjoy "Film 7 (1997)"? '
                'Answer Yes or No.\nAnswer:', "Answer:", "ça va? 12345"]


def random_params(cfg, lora=None, seed=0, b_std=0.1):
    """Params of LlamaForCausalLM(cfg, lora) drawn on the host (no compiled init): kernels N(0, 0.02),
    RMSNorm scales U(0.5, 1.5), LoRA a as PEFT draws it and b N(0, b_std), nonzero so the adapter matters."""
    abstract = jax.eval_shape(LlamaForCausalLM(cfg, lora).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    rng = np.random.default_rng(seed)

    def draw(path, x):
        names = [getattr(p, "key", p) for p in path]
        if names[-2:] == ["lora", "a"]:
            bound = 1 / np.sqrt(x.shape[-2])
            return jnp.asarray(rng.uniform(-bound, bound, x.shape), x.dtype)
        if names[-2:] == ["lora", "b"]:
            return jnp.asarray(rng.normal(0, b_std, x.shape), x.dtype)
        if names[-1] == "weight":
            return jnp.asarray(rng.uniform(0.5, 1.5, x.shape), x.dtype)
        return jnp.asarray(rng.normal(0, 0.02, x.shape), x.dtype)
    return jax.tree_util.tree_map_with_path(draw, abstract["params"])


def tiny_params(cfg=DEBUG_TINY, lora=TINY_LORA, seed=0):
    return random_params(cfg, lora, seed)


def jax_last_logits(cfg, lora, params, ids):
    apply = jax.jit(LlamaForCausalLM(cfg, lora).apply)
    return np.asarray(apply({"params": params}, jnp.asarray([ids]), logits_at=jnp.array([len(ids) - 1])))[0]


def torch_last_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].numpy()


def load_peft_model(base, adapter):
    hf = transformers.LlamaForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    return peft.PeftModel.from_pretrained(hf, str(adapter)).eval()


def compare(cfg, lora, params, tok, hf_tok, model, prompts, yes_no):
    """Max |diff| of the Yes/No logits and of the whole last-token row, over the prompts."""
    worst_yn = worst_row = 0.0
    for text in prompts:
        ids = tok.encode(text).ids
        assert hf_tok(text)["input_ids"] == ids, text
        ours, ref = jax_last_logits(cfg, lora, params, ids), torch_last_logits(model, ids)
        worst_yn = max(worst_yn, float(np.abs(ours[list(yes_no)] - ref[list(yes_no)]).max()))
        worst_row = max(worst_row, float(np.abs(ours - ref).max()))
    return worst_yn, worst_row


TIED_LLAMA3 = dataclasses.replace(DEBUG_TINY, tie_word_embeddings=True, rope_scaling=RopeScaling(8.0, 1.0, 4.0, 64))


@pytest.mark.parametrize("cfg", [DEBUG_TINY, TIED_LLAMA3], ids=["untied", "tied_llama3_rope"])
def test_hf_export_round_trip(tmp_path, cfg):
    params = tiny_params(cfg)
    write_hf_folder(tmp_path, cfg, params, byte_tokenizer())
    back_cfg, back = load_hf_folder(tmp_path)
    assert back_cfg == cfg
    assert ("lm_head.weight" in params_to_hf(params, cfg)) == (not cfg.tie_word_embeddings)
    strip = lambda t: {k: strip(v) for k, v in t.items() if k != "lora"} if isinstance(t, dict) else t
    base = strip(params)  # the exported base has no lora subtrees
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(base)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), back, base)
    hf = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    ids = byte_tokenizer().encode(TINY_PROMPTS[0]).ids
    diff = np.abs(torch_last_logits(hf, ids) - jax_last_logits(cfg, None, base, ids)).max()
    print(f"{cfg.tie_word_embeddings=}: base model max |logit diff| {diff:.2e}")
    assert diff < 1e-4


def export_and_compare(tmp_path, cfg, lora, params, tok, prompts, answers, name):
    """Export base + adapter, load them with transformers + PEFT, and check the Yes/No and last-token
    logits of `prompts` against the JAX model; returns the PEFT model."""
    write_hf_folder(tmp_path / "base", cfg, params, tok)
    write_peft_adapter(tmp_path / "adapter", params, lora, base_model_name_or_path="base")
    model = load_peft_model(tmp_path / "base", tmp_path / "adapter")
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "base"))
    yes_no = tuple(answer_token(tok, a) for a in answers)
    worst_yn, worst_row = compare(cfg, lora, params, tok, hf_tok, model, prompts, yes_no)
    print(f"{name}: max |Yes/No logit diff| {worst_yn:.2e}, max |last-token logit diff| {worst_row:.2e}")
    assert worst_yn < 1e-4 and worst_row < 1e-4
    return model


def test_tiny_export_matches_transformers_and_peft(tmp_path):
    params, tok = tiny_params(), byte_tokenizer()
    model = export_and_compare(tmp_path, DEBUG_TINY, TINY_LORA, params, tok, TINY_PROMPTS, (" Y", " N"), "tiny")
    # the adapter matters: without it the logits move well beyond the tolerance
    with model.disable_adapter():
        plain = torch_last_logits(model, tok.encode(TINY_PROMPTS[0]).ids)
    assert np.abs(plain - jax_last_logits(DEBUG_TINY, TINY_LORA, params, tok.encode(TINY_PROMPTS[0]).ids)).max() > 1e-2


def lora_leaves(tree):
    from sasrecllm_jax.weights.peft_adapter import lora_nodes
    return {(name, k): np.asarray(v) for name, node in lora_nodes(tree).items() for k, v in node.items()}


def test_exported_adapter_imports_bit_identical(tmp_path):
    params = tiny_params()
    write_peft_adapter(tmp_path, params, TINY_LORA)
    cfg, tree = read_peft_adapter(tmp_path, DEBUG_TINY)
    assert cfg == TINY_LORA
    want = lora_leaves(params)
    for key, got in [*lora_leaves(tree).items()]:
        np.testing.assert_array_equal(got, want[key])
        assert got.dtype == np.float32
    abstract = jax.eval_shape(lambda: params)
    restored = load_peft_lora(tmp_path, abstract, TINY_LORA)
    assert lora_leaves(restored).keys() == want.keys()
    for key, got in lora_leaves(restored).items():
        np.testing.assert_array_equal(got, want[key])
    # what training merges in: only lora leaves, under the llm's own paths
    from sasrecllm_jax.train import groups as partition
    assert partition.split({"llm": params}, ["lora"])[0]["llm"].keys() == restored.keys()
    assert jax.tree_util.tree_structure(partition.split({"llm": params}, ["lora"])[0]["llm"]) == \
        jax.tree_util.tree_structure(restored)


def test_exported_adapter_keys_are_peft_s(tmp_path):
    """The names, shapes and config PEFT's own save_pretrained writes for the same LoRA."""
    from safetensors.numpy import load_file
    params = tiny_params(lora=LoraConfig(rank=4, alpha=8.0, dropout=0.05))
    write_hf_folder(tmp_path / "base", DEBUG_TINY, params, byte_tokenizer())
    write_peft_adapter(tmp_path / "ours", params, LoraConfig(rank=4, alpha=8.0, dropout=0.05))
    hf = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "base"), dtype=torch.float32)
    theirs = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.05, task_type="CAUSAL_LM",
                                                     target_modules=["q_proj", "v_proj"]))
    theirs.save_pretrained(str(tmp_path / "theirs"))
    ours_t, theirs_t = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("ours", "theirs"))
    assert {k: v.shape for k, v in ours_t.items()} == {k: v.shape for k, v in theirs_t.items()}
    ours_c, theirs_c = (json.loads((tmp_path / d / "adapter_config.json").read_text()) for d in ("ours", "theirs"))
    for k, v in ours_c.items():
        if k == "target_modules":  # PEFT writes a set: its order follows string hashing, which varies per process
            assert sorted(theirs_c[k]) == sorted(v)
        elif k != "base_model_name_or_path":
            assert theirs_c[k] == v, k


def peft_trained_adapter(tmp_path, targets=("q_proj", "v_proj", "down_proj"), **config):
    """A base folder and a PEFT adapter made by PEFT itself (random B), saved by its save_pretrained."""
    params = random_params(DEBUG_TINY)
    write_hf_folder(tmp_path / "base", DEBUG_TINY, params, byte_tokenizer())
    hf = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "base"), dtype=torch.float32)
    lc = dict(r=4, lora_alpha=16, lora_dropout=0.1, task_type="CAUSAL_LM", target_modules=list(targets))
    model = peft.get_peft_model(hf, peft.LoraConfig(**{**lc, **config}))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    model.save_pretrained(str(tmp_path / "adapter"))
    return params, model.eval()


def test_peft_adapter_runs_in_jax_like_peft(tmp_path):
    base, model = peft_trained_adapter(tmp_path)
    lora, tree = read_peft_adapter(tmp_path / "adapter", DEBUG_TINY)
    assert lora == LoraConfig(rank=4, alpha=16.0, dropout=0.1, targets=("q_proj", "v_proj", "down_proj"))
    abstract = jax.eval_shape(LlamaForCausalLM(DEBUG_TINY, lora).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    restored = load_peft_lora(tmp_path / "adapter", abstract["params"], lora)
    from sasrecllm_jax.train import groups as partition
    params = partition.merge(base, restored)
    tok = byte_tokenizer()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "base"))
    yes_no = answer_token(tok, " Y"), answer_token(tok, " N")
    worst_yn, worst_row = compare(DEBUG_TINY, lora, params, tok, hf_tok, model, TINY_PROMPTS, yes_no)
    print(f"PEFT-made adapter in JAX: max |Yes/No logit diff| {worst_yn:.2e}, last-token row {worst_row:.2e}")
    assert worst_yn < 1e-4 and worst_row < 1e-4


@pytest.mark.parametrize("config,match", [
    (dict(bias="all"), r"bias = 'all'.*retrain the adapter with bias='none'"),
    (dict(bias="lora_only"), r"bias = 'lora_only'"),
    (dict(use_dora=True), r"use_dora = True .*DoRA"),
    (dict(use_rslora=True), r"use_rslora = True .*alpha/sqrt\(r\)"),
    (dict(rank_pattern={"q_proj": 2}), r"rank_pattern = .*same rank"),
    (dict(layers_to_transform=[0]), r"layers_to_transform = \[0\]"),
    (dict(modules_to_save=["lm_head"]), r"modules_to_save"),
    (dict(target_modules=["q_proj", "lm_head"]), r"target_modules has 'lm_head', a module this model does not adapt"),
], ids=["bias_all", "bias_lora_only", "dora", "rslora", "rank_pattern", "layers_subset", "modules_to_save",
        "lm_head"])
def test_unrepresentable_peft_adapters_are_refused(tmp_path, config, match):
    peft_trained_adapter(tmp_path, **config)
    with pytest.raises(WeightsError, match=match):
        read_peft_adapter(tmp_path / "adapter", DEBUG_TINY)


def test_adapter_that_does_not_fit_is_refused(tmp_path):
    params = tiny_params()
    write_peft_adapter(tmp_path, params, TINY_LORA)
    abstract = jax.eval_shape(lambda: params)
    with pytest.raises(WeightsError, match=r"set model.lora.rank: 4 \(is 8\)"):
        load_peft_lora(tmp_path, abstract, dataclasses.replace(TINY_LORA, rank=8))
    with pytest.raises(WeightsError, match=r"set model.lora.alpha: 8 \(is 16\)"):
        load_peft_lora(tmp_path, abstract, dataclasses.replace(TINY_LORA, alpha=16.0))
    with pytest.raises(WeightsError, match=r"model.lora.targets: \[.*'down_proj'\] \(is \['q_proj', 'v_proj'\]\)"):
        load_peft_lora(tmp_path, abstract, dataclasses.replace(TINY_LORA, targets=("q_proj", "v_proj")))
    wider = dataclasses.replace(DEBUG_TINY, hidden_size=96, head_dim=24)
    with pytest.raises(WeightsError, match=r"layers.0.mlp.down_proj.lora_B.weight has shape \(64, 4\), the "
                                           r"model implies \(96, 4\); the adapter was trained on another base"):
        read_peft_adapter(tmp_path, wider)
    deeper = jax.eval_shape(LlamaForCausalLM(dataclasses.replace(DEBUG_TINY, num_layers=3), TINY_LORA).init,
                            jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    with pytest.raises(WeightsError, match=r"._proj.lora_A stacks to \(2, 64, 4\), the model needs \(3, 64, 4\) \(3 layers\)"):
        load_peft_lora(tmp_path, deeper, TINY_LORA)
    # a rank in the tensors that the config does not state
    from safetensors.numpy import load_file, save_file
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    key = "base_model.model.model.layers.1.mlp.up_proj.lora_A.weight"
    save_file({**tensors, key: tensors[key][:2]}, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(WeightsError, match=rf"{key} has shape \(2, 64\), r = 4 in adapter_config.json"):
        read_peft_adapter(tmp_path)
    # a tensor that is no LoRA weight (a DoRA magnitude) is named
    save_file({**tensors, "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector": np.ones(64, np.float32)},
              str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(WeightsError, match=r"tensor base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector "
                                           r"is not a LoRA A/B weight"):
        read_peft_adapter(tmp_path)
    (tmp_path / "adapter_model.safetensors").unlink()
    with pytest.raises(WeightsError, match="no adapter_model.safetensors"):
        read_peft_adapter(tmp_path)


SMOL_PROMPTS = ['A user liked these titles, most recent last: "Toy Story (1995)", "Heat (1995)".\n'
                'Will the user enjoy "Casino (1995)"? Answer Yes or No.\nAnswer:',
                "The capital of France is", "<|im_start|>user\nDo you like films?<|im_end|>\n<|im_start|>assistant\n"]


def test_smollm2_export_matches_transformers_and_peft(smollm2_gguf, tmp_path):
    """The real SmolLM2-135M (dequantized GGUF) with a random adapter on every projection, exported and
    run by transformers + PEFT, against the JAX model."""
    from sasrecllm_jax.models.lora import init_adapters
    from sasrecllm_jax.train import groups as partition
    from sasrecllm_jax.weights.convert import hf_to_params
    from sasrecllm_jax.weights.gguf import read_gguf
    from sasrecllm_jax.weights.tokenizer import load_tokenizer
    cfg, tensors, _ = read_gguf(smollm2_gguf)
    lora = LoraConfig(rank=8, alpha=16.0, dropout=0.0, targets=ALL)
    abstract = jax.eval_shape(LlamaForCausalLM(cfg, lora).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    adapters = init_adapters(abstract["params"], jax.random.key(1), lora)
    rng = np.random.default_rng(0)
    adapters = jax.tree_util.tree_map_with_path(  # b = 0 from init: draw it, so the adapter matters
        lambda p, x: jnp.asarray(rng.normal(0, 0.02, x.shape), x.dtype) if getattr(p[-1], "key", "") == "b" else x,
        adapters)
    params = partition.merge(hf_to_params(tensors, cfg, str(smollm2_gguf)), adapters)
    del tensors
    tok = load_tokenizer(smollm2_gguf, cache=tmp_path)
    model = export_and_compare(tmp_path, cfg, lora, params, tok, SMOL_PROMPTS, (" Yes", " No"), "SmolLM2")
    ids = tok.encode(SMOL_PROMPTS[0]).ids
    with model.disable_adapter():
        plain = torch_last_logits(model, ids)
    assert np.abs(plain - torch_last_logits(model, ids)).max() > 1e-2  # the adapter changes the answer logits


# --------------------------------------------------------------------------- the export CLI on a finished run
RUN = [ONE_SHAPE, "train.enc_epochs=1", "train.llm_epochs=1", "data.max_rows={train: 32, eval: 32}",
       "train.log_every=100", "model.encoder=mf", "model.mf.dim=16"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synthetic_dataset(tmp_path_factory.mktemp("data") / "synthetic")


def finish_run(dataset, workdir, method, *overrides):
    from sasrecllm_jax.train.run import train_and_evaluate
    train_and_evaluate(smoke_config(dataset, *RUN, f"train.method={method}", *overrides), workdir)
    return workdir


@pytest.mark.parametrize("inject", ["tokens", "last"])
def test_export_cli_end_to_end(dataset, tmp_path, capsys, inject):
    """A CoLLM-MF run (an MF encoder, the mapper and LoRA on hybrid prompts, its MF score fused by a residual
    gate that starts at 0.5; its vectors as soft tokens, or added at the text prompt's last position) exported;
    the README's own code scores text prompts like the run's LLM and hybrid rows like the run itself."""
    import re
    from sasrecllm_jax.data.prompts import history_text
    from sasrecllm_jax.export import main
    from sasrecllm_jax.score import Recommender
    run = finish_run(dataset, tmp_path / "run", "collm_mf", "model.mapper.fusion=residual",
                     "model.mapper.llm_gate_init=0.5", f"model.mapper.inject={inject}")
    out = tmp_path / "export"
    assert main([str(run), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter", "base", "collaborative"]
    collab = json.loads((out / "collaborative" / "collaborative.json").read_text())
    rec = Recommender(run)
    assert (collab["prompt"], collab["encoder"]["kind"], collab["num_tokens"]) == ("hybrid", "mf", 1)
    assert ("<UserID>" in collab["template"]) == (inject == "tokens") and ("markers" in collab) == (inject == "tokens")
    assert [collab["answer"][a]["token_id"] for a in ("yes", "no")] == list(rec.assembly.backbone.answer_ids)
    from safetensors.numpy import load_file
    weights = load_file(str(out / "collaborative" / "collaborative.safetensors"))
    assert sorted(weights) == ["mapper/fc1/bias", "mapper/fc1/kernel", "mapper/fc2/bias", "mapper/fc2/kernel",
                               "mapper/llm_gate", "mf/item_emb/embedding", "mf/user_emb/embedding"]
    np.testing.assert_array_equal(weights["mf/user_emb/embedding"], np.asarray(rec.params["mf"]["user_emb"]["embedding"]))
    lora, _ = read_peft_adapter(out / "adapter", rec.assembly.backbone.llm_cfg)
    assert lora == rec.cfg.model.lora

    readme = {}
    exec(compile(readme_code(out), str(out / "README.md"), "exec"), readme)  # as a user would run it
    # text prompts: the README's score() against the run's LLM (base + LoRA) in JAX
    yes, no = rec.assembly.backbone.answer_ids
    worst = 0.0
    for text in TINY_PROMPTS:
        ids = rec.assembly.backbone.tokenizer.encode(text).ids
        ours = jax_last_logits(rec.assembly.backbone.llm_cfg, rec.cfg.model.lora, rec.params["llm"], ids)
        worst = max(worst, abs(readme["score"](text) - float(ours[yes] - ours[no])))
    # hybrid rows: the README's score_hybrid() against the run's own scores
    rows = rec.assembly.dataset.splits["test"].head(4)
    titles = rec.assembly.dataset.titles()
    uids, iids, hists = rows["uid"].tolist(), rows["iid"].tolist(), [list(h) for h in rows["his"]]
    theirs = []
    for u, i, h in zip(uids, iids, hists):
        text = collab["template"].format(history=history_text([titles[x] for x in h[-rec.cfg.data.max_titles:]]),
                                         target=titles[i])
        user_vector, item_vector = weights["mf/user_emb/embedding"][u], weights["mf/item_emb/embedding"][i]
        llm_score = readme["score_hybrid"](re.split("<UserID>|<ItemID>", text), user_vector, item_vector)
        theirs.append(readme["fused_score"](llm_score, user_vector, item_vector, u, i))
    hybrid = float(np.abs(np.asarray(theirs) - rec.score(uids, hists, iids)).max())
    with capsys.disabled():
        print(f"export: max |score diff| text {worst:.2e}, hybrid {hybrid:.2e}")
    assert worst < 1e-4 and hybrid < 1e-4

    capsys.readouterr()
    assert main([str(run), "--out", str(out)]) == 2  # never written into an old export
    err = capsys.readouterr().err
    assert err.startswith("error: --out ") and "exists and is not empty" in err and err.count("\n") == 1
    assert main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err
    mf_run = finish_run(dataset, tmp_path / "mf", "mf")
    capsys.readouterr()
    assert main([str(mf_run), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {mf_run}: method mf has no LLM, so there is nothing to export for transformers + PEFT "
                   f"(its model is the checkpoint in {mf_run / 'final'})\n")
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()


def test_export_readme_of_a_sasrec_hybrid_runs_as_written_and_scores_like_the_run(dataset, tmp_path):
    """A SASRec hybrid (the quickstart's kind) exported: its README's code runs as written (SASRec's user
    vector from the example's history included), its example asks about the dataset's own titles, and its
    user_vector_of, score_hybrid and fused_score score test rows as the run does; collaborative.json says
    where a prompt is cut (data.max_tokens)."""
    import re
    from sasrecllm_jax.data.prompts import history_text
    from sasrecllm_jax.export import main
    from sasrecllm_jax.score import Recommender
    run = finish_run(dataset, tmp_path / "run", "sasrecllm", "model.encoder=sasrec", "model.sasrec.hidden=16",
                     "model.mapper.fusion=residual", "model.mapper.llm_gate_init=0.5")
    out = tmp_path / "export"
    assert main([str(run), "--out", str(out)]) == 0
    rec = Recommender(run)
    collab = json.loads((out / "collaborative" / "collaborative.json").read_text())
    assert f"data.max_tokens = {rec.cfg.data.max_tokens} tokens" in collab["fields"]["{history}"]
    titles = rec.assembly.dataset.titles()
    text = (out / "README.md").read_text()
    assert repr(str(titles[7])) in text and "Toy Story" not in text
    readme = {}
    exec(compile(readme_code(out), str(out / "README.md"), "exec"), readme)  # prints the example's scores
    rows = rec.assembly.dataset.splits["test"].head(3)
    uids, iids, hists = rows["uid"].tolist(), rows["iid"].tolist(), [list(h) for h in rows["his"]]
    theirs = []
    for u, i, h in zip(uids, iids, hists):
        prompt = collab["template"].format(history=history_text([titles[x] for x in h[-rec.cfg.data.max_titles:]]),
                                           target=titles[i])
        user_vector, item_vector = readme["user_vector_of"](h), readme["w"]["sasrec/item_emb/embedding"][i]
        llm_score = readme["score_hybrid"](re.split("<UserID>|<ItemID>", prompt), user_vector, item_vector)
        theirs.append(readme["fused_score"](llm_score, user_vector, item_vector, u, i))
    np.testing.assert_allclose(theirs, rec.score(uids, hists, iids), rtol=0, atol=1e-4)


def test_regex_target_modules_are_read_from_the_keys(tmp_path):
    peft_trained_adapter(tmp_path, target_modules=r".*\.(q_proj|up_proj)")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["target_modules"] == r".*\.(q_proj|up_proj)"
    lora, tree = read_peft_adapter(tmp_path / "adapter", DEBUG_TINY)
    assert lora.targets == ("q_proj", "up_proj") and tree["model"]["layers"]["mlp"]["up_proj"]["lora"]["b"].shape == (2, 4, 128)


def test_a_phase_starts_from_a_peft_adapter(dataset, tmp_path):
    """train.phases[*].restore: {lora: peft:DIR}: the phase starts from the adapter's values exactly; a
    restore of another group from a PEFT folder is refused before anything runs."""
    import json as json_lib
    from sasrecllm_jax.errors import ConfigError
    from sasrecllm_jax.train import groups as partition
    from sasrecllm_jax.train.run import train_and_evaluate
    lora = LoraConfig(rank=4, alpha=8.0)  # configs/smoke.yaml's model.lora
    adapter = write_peft_adapter(tmp_path / "adapter", random_params(DEBUG_TINY, lora, seed=3), lora)
    phases = json_lib.dumps([{"name": "tuned", "trainable": ["lora"], "prompt": "text", "max_steps": 2,
                              "lr": {"lora": 1e-3}, "restore": {"lora": f"peft:{adapter}"}}])
    seen = {}
    cfg = smoke_config(dataset, *RUN, "train.method=tallrec", f"train.phases={phases}")
    train_and_evaluate(cfg, tmp_path / "run", on_phase=lambda p, before, after: seen.update(before=before))
    want = lora_leaves(read_peft_adapter(adapter)[1])
    got = lora_leaves(partition.split(seen["before"], ["lora"])[0]["llm"])
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    bad = phases.replace('"lora": "peft:', '"sasrec": "peft:')
    with pytest.raises(ConfigError, match="a PEFT adapter restores lora only"):
        train_and_evaluate(smoke_config(dataset, *RUN, "train.method=tallrec", f"train.phases={bad}"), tmp_path / "r2")
