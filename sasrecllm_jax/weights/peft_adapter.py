"""LoRA adapters <-> PEFT adapter folders (adapter_config.json + adapter_model.safetensors).

This project keeps an adapter as a `lora: {a, b}` subtree beside each adapted kernel, stacked over
layers; PEFT keeps one pair of torch Linear weights per layer and module:

    llm/model/layers/self_attn/q_proj/lora/a  [L, in, r]
        <-> base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight  [r, in]   (a[i].T)
    llm/model/layers/self_attn/q_proj/lora/b  [L, r, out]
        <-> base_model.model.model.layers.{i}.self_attn.q_proj.lora_B.weight  [out, r]  (b[i].T)

Both scale the update by lora_alpha / r (PEFT without use_rslora), so the numbers carry over unchanged.
Reading refuses, with the key and what to do, every PEFT feature this model cannot represent: biases,
DoRA, rsLoRA, per-module ranks or alphas, a subset of layers, fully trained extra modules, inits that
rewrite the base weights, and modules this Llama does not adapt.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from sasrecllm_jax.config import LlamaConfig, LoraConfig
from sasrecllm_jax.errors import WeightsError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PROJECTIONS = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
               "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}  # the Linear layers lora.Linear adapts
PREFIX = "base_model.model.model.layers"  # what PEFT's save_pretrained writes for a LlamaForCausalLM
# PEFT also accepts a model wrapped without the causal-LM head (base_model.model.layers...): read both
_KEY = re.compile(r"(?:base_model\.model\.)?(?:model\.)?layers\.(\d+)\.(\w+)\.(\w+)\.lora_([AB])\.weight")

# adapter_config.json fields that change nothing this importer has to represent (bookkeeping, dropout,
# initialisation of the adapter alone, options that only act together with a refused one)
HARMLESS = {"base_model_name_or_path", "revision", "inference_mode", "peft_version", "auto_mapping", "task_type",
            "lora_dropout", "layers_pattern", "exclude_modules", "megatron_core", "megatron_config",
            "qalora_group_size", "loftq_config", "eva_config", "corda_config", "lora_ga_config",
            "ensure_weight_tying"}
CHECKED = {"peft_type", "r", "lora_alpha", "target_modules", "bias", "init_lora_weights"}
# init_lora_weights values that only draw the adapter; the others (pissa, olora, corda, loftq, lora_ga)
# also rewrite the base weights, which an adapter file does not carry
ADAPTER_ONLY_INITS = (True, False, "gaussian", "eva", "orthogonal")
HINTS = {  # refused field -> what to do instead
    "use_dora": "DoRA's magnitude vectors have no counterpart here; train a plain LoRA (use_dora=False)",
    "use_rslora": "rsLoRA scales by alpha/sqrt(r), this model by alpha/r; train with use_rslora=False",
    "rank_pattern": "every module here has the same rank; train without rank_pattern",
    "alpha_pattern": "every module here has the same alpha; train without alpha_pattern",
    "modules_to_save": "fully trained copies of modules are not adapters; train without modules_to_save",
    "layers_to_transform": "every layer is adapted here; train without layers_to_transform",
    "layer_replication": "the layer stack is fixed here; train without layer_replication",
    "lora_bias": "LoRA's B has no bias here; train with lora_bias=False",
    "fan_in_fan_out": "the Llama projections are nn.Linear; fan_in_fan_out must be false",
    "target_parameters": "only Linear modules are adapted here; train without target_parameters",
    "trainable_token_indices": "the embedding is frozen here; train without trainable_token_indices",
}


def lora_dims(cfg: LlamaConfig) -> dict[str, tuple[int, int]]:
    """Projection name -> (in, out) features of its kernel."""
    d, f = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    return {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
            "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}


def lora_nodes(llm_params: dict, where: str = "llm params") -> dict[str, dict]:
    """{projection name: {"a": [L, in, r], "b": [L, r, out]}} for every `lora` subtree of an `llm` tree."""
    layers = llm_params.get("model", {}).get("layers", {}) if isinstance(llm_params, dict) else {}
    out = {}
    for block in ("self_attn", "mlp"):
        for name, node in layers.get(block, {}).items():
            if isinstance(node, dict) and "lora" in node:
                if PROJECTIONS.get(name) != block:
                    raise WeightsError(f"{where}: model/layers/{block}/{name}/lora is not a projection of this Llama")
                out[name] = node["lora"]
    return out


def set_lora(tree: dict, name: str, a, b) -> None:
    """Put an adapter pair into an `llm`-shaped tree at model/layers/<block>/<name>/lora."""
    tree.setdefault("model", {}).setdefault("layers", {}).setdefault(PROJECTIONS[name], {})[name] = {
        "lora": {"a": a, "b": b}}


def _number(x: float):
    return int(x) if float(x).is_integer() else float(x)


# --------------------------------------------------------------------------- export
def adapter_config(lora_cfg: LoraConfig, base_model_name_or_path: str = "") -> dict:
    """The adapter_config.json of a plain LoRA on a Llama causal LM, as PEFT's LoraConfig writes it."""
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
        "r": lora_cfg.rank, "lora_alpha": _number(lora_cfg.alpha), "lora_dropout": lora_cfg.dropout,
        "target_modules": list(lora_cfg.targets), "bias": "none", "fan_in_fan_out": False,
        "use_rslora": False, "use_dora": False, "lora_bias": False, "init_lora_weights": True,
        "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None,
        "rank_pattern": {}, "alpha_pattern": {}, "inference_mode": True, "revision": None,
    }


def lora_to_peft(llm_params: dict, lora_cfg: LoraConfig) -> dict[str, np.ndarray]:
    """The `lora` subtrees of an `llm` tree -> {PEFT key: float32 array}."""
    nodes = lora_nodes(llm_params)
    if set(nodes) != set(lora_cfg.targets):
        raise WeightsError(f"the llm params adapt {sorted(nodes)} but model.lora.targets is {list(lora_cfg.targets)}; "
                           f"pass the LoraConfig the params were built with")
    out = {}
    for name in lora_cfg.targets:
        a, b = (np.asarray(nodes[name][k], np.float32) for k in ("a", "b"))
        if a.ndim != 3 or b.ndim != 3 or a.shape[2] != lora_cfg.rank or b.shape[1] != lora_cfg.rank:
            raise WeightsError(f"{name}/lora: a {a.shape}, b {b.shape} are not stacked [L, in, {lora_cfg.rank}] and "
                               f"[L, {lora_cfg.rank}, out]; pass the LoraConfig the params were built with")
        key = f"{PREFIX}.{{}}.{PROJECTIONS[name]}.{name}.lora_{{}}.weight"
        for i in range(a.shape[0]):
            out[key.format(i, "A")] = np.ascontiguousarray(a[i].T)
            out[key.format(i, "B")] = np.ascontiguousarray(b[i].T)
    return out


def write_peft_adapter(folder: str | Path, llm_params: dict, lora_cfg: LoraConfig,
                       base_model_name_or_path: str = "") -> Path:
    """Write the adapters of an `llm` tree as a PEFT folder that peft.PeftModel.from_pretrained loads."""
    folder = Path(folder)
    tensors = lora_to_peft(llm_params, lora_cfg)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(adapter_config(lora_cfg, base_model_name_or_path), indent=2) + "\n")
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    return folder


# --------------------------------------------------------------------------- import
def _truthy(v) -> bool:
    return v not in (None, False, "", 0) and v != {} and v != []


def _check_config(hf: dict, where: str) -> None:
    if hf.get("peft_type") != "LORA":
        raise WeightsError(f"{where}: peft_type = {hf.get('peft_type')!r}; only LORA adapters load here")
    if hf.get("bias", "none") != "none":
        raise WeightsError(f"{where}: bias = {hf['bias']!r} trains bias terms the adapter would have to carry "
                           f"(this Llama has none); retrain the adapter with bias='none'")
    init = hf.get("init_lora_weights", True)
    if init not in ADAPTER_ONLY_INITS:
        raise WeightsError(f"{where}: init_lora_weights = {init!r} rewrites the base weights, which the adapter "
                           f"file does not carry; convert it to a plain LoRA first (PEFT's save_pretrained with "
                           f"path_initial_model_for_weight_conversion) or train with init_lora_weights=True")
    for key, value in hf.items():
        if key in HARMLESS or key in CHECKED or not _truthy(value):
            continue
        hint = HINTS.get(key, "this importer does not know what it changes; train without it")
        raise WeightsError(f"{where}: {key} = {value!r} cannot be represented: {hint}")
    r = hf.get("r")
    if not isinstance(r, int) or r < 1:
        raise WeightsError(f"{where}: r = {r!r}; a LoRA rank is a positive integer")
    if not isinstance(hf.get("lora_alpha"), (int, float)):
        raise WeightsError(f"{where}: lora_alpha = {hf.get('lora_alpha')!r}; a number is needed")


def _named_targets(target_modules, where: str) -> set[str] | None:
    """The projection names a target_modules list names (None for a regex string: the keys decide)."""
    if isinstance(target_modules, str):
        return None
    if not target_modules:
        raise WeightsError(f"{where}: target_modules is empty; the adapter adapts nothing")
    out = set()
    for t in target_modules:
        name = t.rsplit(".", 1)[-1]
        block = t.rsplit(".", 2)[-2] if t.count(".") else None
        if name not in PROJECTIONS or (block is not None and block != PROJECTIONS[name]):
            raise WeightsError(f"{where}: target_modules has {t!r}, a module this model does not adapt; "
                               f"retrain with target_modules among {list(PROJECTIONS)}")
        out.add(name)
    return out


def read_adapter_files(folder: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(adapter_config.json as a dict, {key: float32 array}) of a PEFT adapter folder."""
    folder = Path(folder)
    cfg_path, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not cfg_path.exists():
        raise WeightsError(f"{folder}: no {CONFIG_FILE}; pass a folder written by PEFT's save_pretrained "
                           f"(or by python -m sasrecllm_jax.export)")
    if not weights.exists():
        bin_file = " (adapter_model.bin is not read: save with safe_serialization=True)" \
            if (folder / "adapter_model.bin").exists() else ""
        raise WeightsError(f"{folder}: no {WEIGHTS_FILE}{bin_file}")
    try:
        with safe_open(weights, framework="numpy") as st:
            tensors = {k: np.asarray(st.get_tensor(k), np.float32) for k in st.keys()}
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise WeightsError(f"{weights}: cannot be read ({type(e).__name__}: {e}); the file is damaged") from None
    return json.loads(cfg_path.read_text()), tensors


def read_peft_adapter(folder: str | Path, llm_cfg: LlamaConfig | None = None) -> tuple[LoraConfig, dict]:
    """(LoraConfig, `llm`-shaped tree of float32 host arrays holding only the `lora` subtrees) of a PEFT
    folder. With llm_cfg, the layer count and every shape are checked against that model too."""
    folder = Path(folder)
    hf, tensors = read_adapter_files(folder)
    where = str(folder / CONFIG_FILE)
    _check_config(hf, where)
    r, named = hf["r"], _named_targets(hf.get("target_modules"), where)
    dims = lora_dims(llm_cfg) if llm_cfg is not None else None
    found: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    for key, x in tensors.items():
        m = _KEY.fullmatch(key)
        if m is None:
            raise WeightsError(f"{folder / WEIGHTS_FILE}: tensor {key} is not a LoRA A/B weight of a Linear layer "
                               f"(DoRA magnitudes, biases, embeddings and saved modules cannot be represented); "
                               f"retrain a plain LoRA of {list(PROJECTIONS)}")
        layer, block, name, ab = int(m.group(1)), m.group(2), m.group(3), m.group(4)
        if PROJECTIONS.get(name) != block or (named is not None and name not in named):
            why = "this model does not adapt" if PROJECTIONS.get(name) != block else "target_modules does not name"
            raise WeightsError(f"{folder / WEIGHTS_FILE}: tensor {key} adapts {block}.{name}, which {why}; "
                               f"adapters of {list(PROJECTIONS)} listed in target_modules load")
        if x.ndim != 2 or (x.shape[0] if ab == "A" else x.shape[1]) != r:
            want = f"({r}, in)" if ab == "A" else f"(out, {r})"
            raise WeightsError(f"{folder / WEIGHTS_FILE}: {key} has shape {x.shape}, r = {r} in {CONFIG_FILE} "
                               f"implies {want}; per-module ranks (rank_pattern) cannot be represented")
        if dims is not None:
            fan_in, fan_out = dims[name]
            want = (r, fan_in) if ab == "A" else (fan_out, r)
            if x.shape != want:
                raise WeightsError(f"{folder / WEIGHTS_FILE}: {key} has shape {x.shape}, the model implies {want}; "
                                   f"the adapter was trained on another base model")
        found.setdefault(name, {}).setdefault(layer, {})[ab] = x
    if not found:
        raise WeightsError(f"{folder / WEIGHTS_FILE}: holds no LoRA weights")
    num_layers = llm_cfg.num_layers if llm_cfg is not None else 1 + max(i for per in found.values() for i in per)
    targets = [n for n in PROJECTIONS if n in found]
    if named is not None and set(targets) != named:
        raise WeightsError(f"{where}: target_modules names {sorted(named - set(targets))} but "
                           f"{WEIGHTS_FILE} has no weights for them; the folder is incomplete")
    tree: dict = {}
    for name in targets:
        per = found[name]
        for i in range(num_layers):
            for ab in "AB":
                if ab not in per.get(i, {}):
                    raise WeightsError(f"{folder / WEIGHTS_FILE}: {PREFIX}.{i}.{PROJECTIONS[name]}.{name}.lora_{ab}"
                                       f".weight is missing; every one of the {num_layers} layers must be adapted")
        extra = sorted(set(per) - set(range(num_layers)))
        if extra:
            raise WeightsError(f"{folder / WEIGHTS_FILE}: {name} adapters for layer {extra[0]}, the model has "
                               f"{num_layers} layers; the adapter was trained on another base model")
        shapes = {(per[i]["A"].shape, per[i]["B"].shape) for i in range(num_layers)}
        if len(shapes) != 1:
            raise WeightsError(f"{folder / WEIGHTS_FILE}: {name} has differently shaped adapters across layers "
                               f"{sorted(shapes)}; the adapter was trained on another base model")
        a = np.stack([per[i]["A"].T for i in range(num_layers)])
        b = np.stack([per[i]["B"].T for i in range(num_layers)])
        set_lora(tree, name, a, b)
    cfg = LoraConfig(rank=r, alpha=float(hf["lora_alpha"]), dropout=float(hf.get("lora_dropout") or 0.0),
                     targets=tuple(targets))
    return cfg, tree


def load_peft_lora(folder: str | Path, abstract_llm_params: dict, lora_cfg: LoraConfig) -> dict:
    """A PEFT adapter as the `lora` subtrees of a model's `llm` params (for a phase's `restore: {lora: ...}`).

    abstract_llm_params: the `llm` tree (arrays or jax.ShapeDtypeStruct) the adapter must fit;
    lora_cfg: the run's model.lora. Rank, alpha (so the scale alpha/r), the adapted modules and every
    shape must agree; the result is an `llm`-shaped tree of jax arrays holding only the `lora` subtrees,
    in the dtypes of abstract_llm_params (wrap it as {"llm": tree} to merge it into the full params)."""
    got, tree = read_peft_adapter(folder)
    want = lora_nodes(abstract_llm_params, "abstract_llm_params")
    where = Path(folder) / CONFIG_FILE
    if not want:
        raise WeightsError(f"{where}: the model has no LoRA adapters to restore into; build it with model.lora")
    fixes = []
    if got.rank != lora_cfg.rank:
        fixes.append(f"model.lora.rank: {got.rank} (is {lora_cfg.rank})")
    if got.alpha != lora_cfg.alpha:
        fixes.append(f"model.lora.alpha: {_number(got.alpha)} (is {_number(lora_cfg.alpha)})")
    if set(got.targets) != set(lora_cfg.targets) or set(got.targets) != set(want):
        fixes.append(f"model.lora.targets: {list(got.targets)} (is {list(lora_cfg.targets)})")
    if fixes:
        raise WeightsError(f"{where}: the adapter does not fit this model's LoRA; set {'; '.join(fixes)}")
    have = lora_nodes(tree)
    out: dict = {}
    for name, node in want.items():
        a, b = have[name]["a"], have[name]["b"]
        for k, x in (("a", a), ("b", b)):
            if tuple(x.shape) != tuple(node[k].shape):
                L = node[k].shape[0]
                raise WeightsError(f"{Path(folder) / WEIGHTS_FILE}: {name}.lora_{k.upper()} stacks to {x.shape}, the "
                                   f"model needs {tuple(node[k].shape)} ({L} layers); the adapter was trained on "
                                   f"another base model")
        set_lora(out, name, jnp.asarray(a, node["a"].dtype), jnp.asarray(b, node["b"].dtype))
    return out
